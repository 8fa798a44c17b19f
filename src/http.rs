//! A small blocking HTTP(S) client for the synchronous parts of ferry
//! (chart repositories in the gate, Airflow's API in DAG retention).
//!
//! Each call runs on a thread of its own with a runtime of its own, so it
//! works whatever runtime the caller is in (or none), and never blocks a
//! runtime worker the caller shares.

use std::time::Duration;

pub use ::http::{Method, StatusCode};

/// One request. Credentials go in `authorization`, which is sent only to
/// the host first named: never on to another host a redirect points at.
pub struct Request<'a> {
    pub method: http::Method,
    pub url: &'a str,
    pub authorization: Option<&'a str>,
    /// A JSON body (sent with `Content-Type: application/json`).
    pub json: Option<Vec<u8>>,
    /// More headers (a webhook's signature, its event name).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl<'a> Request<'a> {
    pub fn get(url: &'a str, timeout: Duration) -> Request<'a> {
        Request {
            method: http::Method::GET,
            url,
            authorization: None,
            json: None,
            headers: Vec::new(),
            timeout,
        }
    }

    pub fn post_json(url: &'a str, body: Vec<u8>, timeout: Duration) -> Request<'a> {
        Request {
            method: http::Method::POST,
            url,
            authorization: None,
            json: Some(body),
            headers: Vec::new(),
            timeout,
        }
    }

    pub fn authorization(mut self, value: Option<&'a str>) -> Request<'a> {
        self.authorization = value;
        self
    }

    pub fn header(mut self, name: &str, value: String) -> Request<'a> {
        self.headers.push((name.to_string(), value));
        self
    }
}

/// What came back: the final status and body, redirects followed (GET only).
pub struct Response {
    pub status: http::StatusCode,
    pub body: Vec<u8>,
}

/// Sends `request`. An `Err` is a transport failure (no answer, TLS, a bad
/// URL), said in one line with its causes; any HTTP status is a `Response`.
pub fn send(request: Request<'_>) -> Result<Response, String> {
    let timeout = request.timeout;
    std::thread::scope(|s| {
        s.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                tokio::time::timeout(timeout, send_async(&request))
                    .await
                    .map_err(|_| format!("no answer in {}", humantime::format_duration(timeout)))?
            })
        })
        .join()
        .map_err(|_| "the HTTP thread panicked".to_string())?
    })
}

async fn send_async(request: &Request<'_>) -> Result<Response, String> {
    use http_body_util::BodyExt;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<bytes::Bytes>>(https);
    let mut current = url::Url::parse(request.url).map_err(|e| format!("bad URL: {e}"))?;
    let first_host = current.host_str().map(str::to_string);
    for _ in 0..5 {
        let uri: http::Uri = current
            .as_str()
            .parse()
            .map_err(|e| format!("bad URL: {e}"))?;
        let mut builder = http::Request::builder()
            .method(request.method.clone())
            .uri(uri)
            .header(http::header::ACCEPT, "application/json, */*");
        if let Some(auth) = request
            .authorization
            .filter(|_| current.host_str() == first_host.as_deref())
        {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = match &request.json {
            Some(json) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                bytes::Bytes::from(json.clone())
            }
            None => bytes::Bytes::new(),
        };
        let outgoing = builder
            .body(http_body_util::Full::new(body))
            .map_err(|e| format!("bad request: {e}"))?;
        let response = client.request(outgoing).await.map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            message
        })?;
        let status = response.status();
        if status.is_redirection() && request.method == http::Method::GET {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or(format!("{status} without a Location"))?;
            current = current
                .join(location)
                .map_err(|e| format!("bad redirect `{location}`: {e}"))?;
            continue;
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        return Ok(Response {
            status,
            body: body.to_bytes().to_vec(),
        });
    }
    Err("more than 5 redirects".into())
}
