//! The object-store client: an `object_store` AmazonS3 for the configured
//! endpoint, bucket, region and addressing, with our paced HTTP client
//! (throttle.rs). object_store signs every request (SigV4); its own retries
//! are off because the spool retries with backoff across hours, not seconds.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::RetryConfig;

use super::credentials::Credentials;
use super::throttle::{RateLimiter, ShapedConnector};
use super::UploadError;
use crate::config::UploadConfig;

pub struct Target {
    pub store: AmazonS3,
    pub endpoint: String,
    pub bucket: String,
}

impl Target {
    pub fn store_error(&self, e: &object_store::Error) -> UploadError {
        UploadError::Store {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            msg: describe(e),
        }
    }
}

/// object_store's message and its causes, with a hint for the usual suspects.
pub fn describe(e: &object_store::Error) -> String {
    let s = super::error_chain(e);
    let hint = if s.contains("SignatureDoesNotMatch") || s.contains("InvalidAccessKeyId") {
        " (wrong credentials? check upload.credentials_file)"
    } else if s.contains("NoSuchBucket") {
        " (the bucket does not exist: create it, or fix upload.bucket)"
    } else if s.contains("certificate") || s.contains("InvalidCertificate") || s.contains("tls") {
        " (TLS failure: is the server's CA in upload.ca_file?)"
    } else if s.contains("onnection refused") || s.contains("error trying to connect") {
        " (endpoint unreachable)"
    } else {
        ""
    };
    format!("{s}{hint}")
}

/// Builds the client; reads the CA file (credentials are read by the caller).
pub fn build(
    cfg: &UploadConfig,
    creds: &Credentials,
    limiter: Arc<RateLimiter>,
    sent: Arc<AtomicU64>,
) -> Result<Target, UploadError> {
    let ca_pem = if cfg.ca_file.as_os_str().is_empty() {
        None
    } else {
        let pem = std::fs::read(&cfg.ca_file).map_err(|e| UploadError::Ca {
            path: cfg.ca_file.display().to_string(),
            msg: e.to_string(),
        })?;
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| UploadError::Ca {
            path: cfg.ca_file.display().to_string(),
            msg: super::error_chain(&e),
        })?;
        Some(pem)
    };
    let connector = ShapedConnector {
        limiter,
        sent,
        ca_pem,
        allow_http: cfg.allow_http,
        connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
        request_timeout: Duration::from_millis(cfg.request_timeout_ms),
    };
    let mut b = AmazonS3Builder::new()
        .with_endpoint(cfg.endpoint.trim_end_matches('/'))
        .with_region(&cfg.region)
        .with_bucket_name(&cfg.bucket)
        .with_access_key_id(&creds.access_key_id)
        .with_secret_access_key(&creds.secret_access_key)
        .with_virtual_hosted_style_request(!cfg.path_style)
        .with_allow_http(cfg.allow_http)
        .with_retry(RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .with_http_connector(connector);
    if !creds.session_token.is_empty() {
        b = b.with_token(&creds.session_token);
    }
    let store = b.build().map_err(|e| UploadError::Store {
        endpoint: cfg.endpoint.clone(),
        bucket: cfg.bucket.clone(),
        msg: describe(&e),
    })?;
    Ok(Target {
        store,
        endpoint: cfg.endpoint.clone(),
        bucket: cfg.bucket.clone(),
    })
}
