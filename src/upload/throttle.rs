//! The bandwidth limit and the byte counter behind the progress bar.
//!
//! `object_store` hands a whole part to its HTTP client as one body, so a
//! limit applied between requests would still send each part at line rate.
//! Instead this module is the HTTP client object_store drives (its
//! `HttpConnector` hook): a plain reqwest client whose request bodies are
//! streamed in 64 KiB slices through a token bucket. Signing, retries and
//! the S3 protocol stay object_store's; only the bytes are paced here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};

/// Slice size of a paced body: small enough that the cap holds over a
/// fraction of a second.
const SLICE: usize = 64 * 1024;

/// A token bucket shared by every upload of the process.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_s: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `bytes_per_s` = 0: no limit.
    pub fn new(bytes_per_s: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_s,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// Burst allowed after idling: a tenth of a second's worth (at least a slice).
    fn capacity(&self) -> f64 {
        (self.bytes_per_s as f64 / 10.0).max(SLICE as f64)
    }

    /// How long to wait before sending `n` bytes (taking them from the bucket, going into debt).
    pub fn reserve(&self, n: usize, now: Instant) -> Duration {
        if self.bytes_per_s == 0 {
            return Duration::ZERO;
        }
        let rate = self.bytes_per_s as f64;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *st;
        let dt = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + dt * rate).min(self.capacity());
        *last = now.max(*last);
        *tokens -= n as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }

    pub async fn acquire(&self, n: usize) {
        let d = self.reserve(n, Instant::now());
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

/// What the connector needs: our TLS/timeouts (object_store's own
/// `ClientOptions` are not used), the limiter, the counter.
#[derive(Debug, Clone)]
pub struct ShapedConnector {
    pub limiter: Arc<RateLimiter>,
    /// Request-body bytes handed to the socket so far.
    pub sent: Arc<AtomicU64>,
    pub ca_pem: Option<Vec<u8>>,
    pub allow_http: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl HttpConnector for ShapedConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |e: reqwest::Error| object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        };
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("hvflight/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .https_only(!self.allow_http);
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(generic)?;
            b = b.tls_certs_merge(certs);
        }
        let client = b.build().map_err(generic)?;
        Ok(HttpClient::new(ShapedService {
            client,
            limiter: Arc::clone(&self.limiter),
            sent: Arc::clone(&self.sent),
        }))
    }
}

#[derive(Debug)]
struct ShapedService {
    client: reqwest::Client,
    limiter: Arc<RateLimiter>,
    sent: Arc<AtomicU64>,
}

fn kind_of(e: &reqwest::Error) -> HttpErrorKind {
    if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else {
        HttpErrorKind::Request
    }
}

#[async_trait::async_trait]
impl HttpService for ShapedService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let url = parts
            .uri
            .to_string()
            .parse()
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        let mut r = reqwest::Request::new(parts.method, url);
        *r.headers_mut() = parts.headers;
        let len = body.content_length();
        if len > 0 {
            r.headers_mut()
                .entry(http::header::CONTENT_LENGTH)
                .or_insert_with(|| http::HeaderValue::from(len as u64));
            let (limiter, sent) = (Arc::clone(&self.limiter), Arc::clone(&self.sent));
            let paced = body
                .into_data_stream()
                .flat_map(|chunk| {
                    let slices: Vec<Result<Bytes, HttpError>> = match chunk {
                        Ok(b) => (0..b.len())
                            .step_by(SLICE)
                            .map(|i| Ok(b.slice(i..(i + SLICE).min(b.len()))))
                            .collect(),
                        Err(e) => vec![Err(e)],
                    };
                    futures::stream::iter(slices)
                })
                .then(move |slice| {
                    let (limiter, sent) = (Arc::clone(&limiter), Arc::clone(&sent));
                    async move {
                        if let Ok(b) = &slice {
                            limiter.acquire(b.len()).await;
                            sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                        }
                        slice
                    }
                });
            *r.body_mut() = Some(reqwest::Body::wrap_stream(paced));
        }
        let resp = self
            .client
            .execute(r)
            .await
            .map_err(|e| HttpError::new(kind_of(&e), e))?;
        let resp: http::Response<reqwest::Body> = resp.into();
        let (parts, body) = resp.into_parts();
        let body = HttpResponseBody::new(body.map_err(|e| HttpError::new(kind_of(&e), e)));
        Ok(HttpResponse::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_the_rate() {
        let l = RateLimiter::new(1_000_000);
        let t0 = Instant::now();
        // The first tenth of a second's worth goes at once (after a tenth of a second idle).
        let t = t0 + Duration::from_millis(100);
        assert_eq!(l.reserve(100_000, t), Duration::ZERO);
        // Then 1 MB costs a second.
        let d = l.reserve(1_000_000, t);
        assert!((d.as_secs_f64() - 1.0).abs() < 1e-6, "{d:?}");
        // 10 MB in slices at the same instant: the debt adds up.
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = l.reserve(1_000_000, t);
        }
        assert!((last.as_secs_f64() - 11.0).abs() < 1e-6, "{last:?}");
        assert_eq!(RateLimiter::new(0).reserve(1 << 30, t), Duration::ZERO);
    }
}
