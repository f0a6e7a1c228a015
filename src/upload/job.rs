//! One upload attempt of one spool entry, shared by the agent's uploader and
//! `hvflight bundle upload`. The caller holds the entry's claim.
//!
//! 1. credentials (mode checked) and client, every attempt: a fixed file or
//!    rotated keys take effect without a restart;
//! 2. HEAD the key: an object of the right size and ETag is already there
//!    (a previous attempt completed but died before recording it) → done,
//!    nothing is sent twice;
//! 3. one PUT, or multipart: create (upload id recorded at once), parts in
//!    order, each recorded with its ETag as it lands, so a killed agent or
//!    a dead server costs at most the part in flight; complete;
//! 4. HEAD again: size and ETag (MD5, or MD5 of the part MD5s + "-N")
//!    must equal what was computed from the spooled file; only then is the
//!    entry `uploaded`.
//!
//! A failure puts the entry back to `queued` with the error and the next
//! attempt's time (backoff.rs).

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest, Md5};
use object_store::multipart::{MultipartStore, PartId};
use object_store::{ObjectStoreExt, PutPayload};

use super::progress::Progress;
use super::spool::{Entry, Multipart, PartDone, Spool, State};
use super::throttle::RateLimiter;
use super::{client, credentials, Settings, UploadError};

/// What every attempt of a process shares.
pub struct Context {
    pub settings: Settings,
    pub spool: Spool,
    pub limiter: Arc<RateLimiter>,
    pub progress: Arc<Progress>,
}

impl Context {
    pub fn new(settings: Settings) -> Context {
        let sent = Arc::new(AtomicU64::new(0));
        Context {
            spool: Spool::new(&settings.spool_dir),
            limiter: Arc::new(RateLimiter::new(
                settings.config.bandwidth_limit_bytes_per_s,
            )),
            progress: Arc::new(Progress::new(sent)),
            settings,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Uploaded {
    pub location: String,
    /// It was already there (a previous attempt's), nothing sent now.
    pub already_there: bool,
    pub bytes_sent: u64,
    pub seconds: f64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unquote(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn read_range(path: &std::path::Path, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(off))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} bytes at offset {off}, {len} expected", buf.len()),
        ));
    }
    Ok(buf)
}

/// The ETag an S3-API store gives a correct upload of `path` (`size`
/// bytes) in parts of `part_size` (0 = one PUT). Pure but for reading the file.
pub fn expected_etag(path: &std::path::Path, size: u64, part_size: u64) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    if part_size == 0 {
        let mut h = Md5::new();
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        return Ok(hex(&h.finalize()));
    }
    let mut all = Md5::new();
    let mut parts = 0u64;
    let mut off = 0u64;
    while off < size || parts == 0 {
        let len = part_size.min(size - off);
        let mut h = Md5::new();
        let mut left = len;
        while left > 0 {
            let n = f.read(&mut buf[..left.min(1 << 20) as usize])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        all.update(h.finalize());
        parts += 1;
        off += len;
        if len == 0 {
            break;
        }
    }
    Ok(format!("{}-{parts}", hex(&all.finalize())))
}

fn entry_err(spool: &Spool, e: &Entry, msg: String) -> UploadError {
    UploadError::Entry {
        path: spool.json_path(&e.name).display().to_string(),
        msg,
    }
}

/// Does the object at the key match what we would upload?
fn matches(meta: &object_store::ObjectMeta, e: &Entry, verify_etag: bool) -> Result<(), String> {
    if meta.size != e.size {
        return Err(format!("{} bytes there, {} sent", meta.size, e.size));
    }
    if verify_etag {
        let got = meta.e_tag.as_deref().map(unquote).unwrap_or_default();
        if got != e.expected_etag {
            return Err(format!(
                "ETag {got:?} there, {:?} computed from the spooled file",
                e.expected_etag
            ));
        }
    }
    Ok(())
}

async fn upload(ctx: &Context, e: &mut Entry) -> Result<Uploaded, UploadError> {
    let t0 = Instant::now();
    let cfg = &ctx.settings.config;
    let spool = &ctx.spool;
    let data = spool.data_path(&e.name);
    let size = std::fs::metadata(&data)
        .map_err(|err| {
            entry_err(
                spool,
                e,
                format!("spooled bundle {}: {err}", data.display()),
            )
        })?
        .len();
    if size != e.size {
        return Err(entry_err(
            spool,
            e,
            format!("spooled bundle is {size} bytes, {} when queued", e.size),
        ));
    }
    if e.expected_etag.is_empty() {
        e.part_size = if size >= cfg.multipart_threshold_bytes {
            cfg.part_size_bytes
        } else {
            0
        };
        e.expected_etag = expected_etag(&data, size, e.part_size)
            .map_err(|err| entry_err(spool, e, format!("reading {}: {err}", data.display())))?;
        spool.save(e)?;
    }
    let creds = credentials::load(&cfg.credentials_file)?;
    let target = client::build(
        cfg,
        &creds,
        Arc::clone(&ctx.limiter),
        Arc::clone(&ctx.progress.sent),
    )?;
    let location = format!("s3://{}/{}", target.bucket, e.key);
    let path = object_store::path::Path::from(e.key.as_str());
    let progress = &ctx.progress;

    // Already there (a previous attempt finished but was not recorded)?
    match target.store.head(&path).await {
        Ok(meta) if matches(&meta, e, cfg.verify_etag).is_ok() => {
            return Ok(Uploaded {
                location,
                already_there: true,
                bytes_sent: 0,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        // Write-only credentials may not HEAD; the upload's answer then
        // says more (e.g. SignatureDoesNotMatch), and verification uses the
        // ETag the store answered to the upload.
        Err(object_store::Error::PermissionDenied { .. })
        | Err(object_store::Error::Unauthenticated { .. }) => {}
        Err(err) => return Err(target.store_error(&err)),
    }
    let answered_etag: Option<String>;

    let mut bytes_sent = 0u64;
    if e.part_size == 0 {
        progress.start(size, 0);
        let body = std::fs::read(&data)
            .map_err(|err| entry_err(spool, e, format!("reading {}: {err}", data.display())))?;
        e.data_requests += 1;
        spool.save(e)?;
        let r = target
            .store
            .put(&path, PutPayload::from(Bytes::from(body)))
            .await;
        match r {
            Ok(put) => answered_etag = put.e_tag,
            Err(err) => {
                progress.reset_request();
                return Err(target.store_error(&err));
            }
        }
        progress.finished(size);
        bytes_sent += size;
    } else {
        let part_size = e.part_size;
        let n_parts = size.div_ceil(part_size).max(1);
        if e.multipart.is_none() {
            let id = target
                .store
                .create_multipart(&path)
                .await
                .map_err(|err| target.store_error(&err))?;
            e.multipart = Some(Multipart {
                upload_id: id,
                part_size,
                started_unix_ns: crate::clock::now().unix_ns,
                parts: Vec::new(),
            });
            spool.save(e)?;
        }
        let mp = e.multipart.clone().expect("set above");
        let done: u64 = mp.parts.iter().map(|p| p.size).sum();
        progress.start(size, done);
        if !mp.parts.is_empty() {
            tracing::info!(entry = %e.name, parts_done = mp.parts.len(), parts = n_parts, "upload: resuming multipart upload");
        }
        for i in mp.parts.len() as u64..n_parts {
            let off = i * part_size;
            let len = part_size.min(size - off);
            let buf = read_range(&data, off, len)
                .map_err(|err| entry_err(spool, e, format!("reading {}: {err}", data.display())))?;
            let md5 = hex(&Md5::digest(&buf));
            e.data_requests += 1;
            let r = target
                .store
                .put_part(
                    &path,
                    &mp.upload_id,
                    i as usize,
                    PutPayload::from(Bytes::from(buf)),
                )
                .await;
            let part = match r {
                Ok(p) => p,
                Err(err) => {
                    progress.reset_request();
                    let msg = client::describe(&err);
                    if msg.contains("NoSuchUpload") {
                        // The server forgot the upload (aborted, expired): start over.
                        e.multipart = None;
                    }
                    spool.save(e)?;
                    return Err(target.store_error(&err));
                }
            };
            let etag = unquote(&part.content_id);
            if etag != md5 {
                progress.reset_request();
                spool.save(e)?;
                return Err(UploadError::Verify {
                    bucket: target.bucket.clone(),
                    key: e.key.clone(),
                    msg: format!("part {}: server ETag {etag:?}, local MD5 {md5:?}", i + 1),
                });
            }
            progress.finished(len);
            bytes_sent += len;
            if let Some(m) = e.multipart.as_mut() {
                m.parts.push(PartDone {
                    number: i as u32 + 1,
                    size: len,
                    etag,
                    md5,
                });
            }
            spool.save(e)?;
        }
        let parts: Vec<PartId> = e
            .multipart
            .as_ref()
            .map(|m| {
                m.parts
                    .iter()
                    .map(|p| PartId {
                        content_id: p.etag.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        match target
            .store
            .complete_multipart(&path, &mp.upload_id, parts)
            .await
        {
            Ok(put) => answered_etag = put.e_tag,
            Err(err) => {
                let msg = client::describe(&err);
                if msg.contains("NoSuchUpload") {
                    e.multipart = None;
                    spool.save(e)?;
                }
                return Err(target.store_error(&err));
            }
        }
    }

    // Verify before recording it as uploaded: HEAD (size and ETag), or,
    // where the credentials may not HEAD, the ETag the store answered.
    let verified = match target.store.head(&path).await {
        Ok(meta) => matches(&meta, e, cfg.verify_etag),
        Err(object_store::Error::PermissionDenied { .. })
        | Err(object_store::Error::Unauthenticated { .. }) => {
            match answered_etag.as_deref().map(unquote) {
                Some(t) if !cfg.verify_etag || t == e.expected_etag => Ok(()),
                Some(t) => Err(format!(
                    "the store answered ETag {t:?}, {:?} computed from the spooled file (HEAD not permitted)",
                    e.expected_etag
                )),
                None => Err("HEAD not permitted and no ETag in the answer: cannot verify".into()),
            }
        }
        Err(err) => return Err(target.store_error(&err)),
    };
    if let Err(msg) = verified {
        // Start over next time rather than trust any part of it.
        e.multipart = None;
        return Err(UploadError::Verify {
            bucket: target.bucket.clone(),
            key: e.key.clone(),
            msg,
        });
    }
    Ok(Uploaded {
        location,
        already_there: false,
        bytes_sent,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

async fn wait_for(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one attempt on `rt` and records its outcome in the spool. The
/// caller holds the claim. `stop` interrupts it (the entry resumes later,
/// without counting as a failure).
pub fn attempt(
    ctx: &Context,
    rt: &tokio::runtime::Runtime,
    e: &mut Entry,
    stop: &AtomicBool,
) -> Result<Uploaded, UploadError> {
    e.state = State::Uploading;
    ctx.spool.save(e)?;
    let r = rt.block_on(async {
        tokio::select! {
            r = upload(ctx, e) => r,
            _ = wait_for(stop) => Err(UploadError::Stopped),
        }
    });
    // `e` is what the upload recorded as it went (also when the future
    // was dropped mid-way by `stop`): parts that landed stay recorded.
    let now = crate::clock::now().unix_ns;
    match &r {
        Ok(u) => {
            e.state = State::Uploaded;
            e.uploaded_unix_ns = now;
            e.location = u.location.clone();
            e.endpoint = ctx.settings.config.endpoint.clone();
            e.multipart = None;
            e.last_error.clear();
            ctx.spool.save(e)?;
            finish_local(ctx, e);
        }
        Err(UploadError::Stopped) => {
            e.state = State::Queued;
            ctx.spool.save(e)?;
        }
        Err(err) => {
            e.state = State::Queued;
            e.attempts += 1;
            e.last_error = err.to_string();
            e.last_error_unix_ns = now;
            let c = &ctx.settings.config;
            let d = super::backoff::next(
                e.attempts,
                Duration::from_millis(c.backoff_initial_ms),
                Duration::from_millis(c.backoff_max_ms),
            );
            e.next_attempt_unix_ns = now + d.as_nanos() as i64;
            ctx.spool.save(e)?;
        }
    }
    r
}

/// After a verified upload: the spooled copy goes; the bundle in bundles/
/// goes too unless `keep_local` (only if it is still the same file).
pub fn finish_local(ctx: &Context, e: &Entry) {
    use std::os::unix::fs::MetadataExt;
    let data = ctx.spool.data_path(&e.name);
    let local = ctx.settings.bundles_dir.join(&e.bundle);
    if !ctx.settings.config.keep_local {
        let same = match (std::fs::metadata(&data), std::fs::metadata(&local)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()) || a.len() == b.len(),
            _ => false,
        };
        if same && std::fs::remove_file(&local).is_ok() {
            tracing::info!(bundle = %local.display(), "upload: local bundle deleted (upload.keep_local = false)");
        }
    }
    let _ = std::fs::remove_file(&data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_of_single_and_multipart_uploads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello world").unwrap();
        // md5("hello world")
        assert_eq!(
            expected_etag(&p, 11, 0).unwrap(),
            "5eb63bbbe01eeed093cb22bb8f5acdc3"
        );
        // Two parts: "hello" and " world"; md5 over the binary part digests.
        let a = Md5::digest(b"hello ");
        let b = Md5::digest(b"world");
        let mut all = Md5::new();
        all.update(a);
        all.update(b);
        assert_eq!(
            expected_etag(&p, 11, 6).unwrap(),
            format!("{}-2", hex(&all.finalize()))
        );
        assert!(expected_etag(&p, 11, 100).unwrap().ends_with("-1"));
    }
}
