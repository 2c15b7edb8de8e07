//! A small HTTP client for both APIs: bearer keys, a fresh `Idempotency-Key` per POST, answers
//! parsed as JSON, cursor pagination, and the read API's `X-Projection-Position`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// The read API's watermark header.
pub const POSITION_HEADER: &str = "x-projection-position";

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The problem's `code`, or "".
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// A command's `last_position`.
    pub fn last_position(&self) -> i64 {
        self.body["last_position"].as_i64().unwrap_or_else(|| panic!("no last_position in {:?}", self.body))
    }

    /// The read API's `X-Projection-Position`.
    pub fn projection_position(&self) -> Option<i64> {
        self.headers.get(POSITION_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `event_type`s a command wrote.
    pub fn event_types(&self) -> Vec<String> {
        self.body["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["event_type"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    pub fn items(&self) -> Vec<Value> {
        self.body["items"].as_array().cloned().unwrap_or_default()
    }
}

/// A client of one service (`base` = `http://127.0.0.1:<port>`).
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .expect("http client");
        Api { base: base.into(), http }
    }

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("response body");
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { status, headers, body }
    }

    /// `POST path` as `key` with a fresh idempotency key.
    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Reply {
        self.post_with_key(key, path, &uuid::Uuid::new_v4().to_string(), body).await
    }

    pub async fn post_with_key(&self, key: &str, path: &str, idempotency_key: &str, body: &Value) -> Reply {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("idempotency-key", idempotency_key)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Self::reply(response).await
    }

    /// `POST path`; panics unless the answer is 2xx.
    pub async fn command(&self, key: &str, path: &str, body: &Value) -> Reply {
        let r = self.post(key, path, body).await;
        assert!(r.status.is_success(), "POST {path}: {} {:#}", r.status, r.body);
        r
    }

    /// `GET path` (with its query) as `key` (no header for `None`).
    pub async fn get(&self, key: Option<&str>, path: &str) -> Reply {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        Self::reply(request.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))).await
    }

    /// `GET path`; panics unless 200.
    pub async fn read(&self, key: &str, path: &str) -> Reply {
        let r = self.get(Some(key), path).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {:#}", r.body);
        r
    }

    /// Every item of a paginated list (`limit=100`, following `next_cursor`); `query` without
    /// `limit`/`cursor`, e.g. `"min_position=7"` or `""`.
    pub async fn read_all(&self, key: &str, path: &str, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{path}?limit=100");
            if !query.is_empty() {
                url = format!("{url}&{query}");
            }
            if let Some(c) = &cursor {
                url = format!("{url}&cursor={c}");
            }
            let page = self.read(key, &url).await;
            items.extend(page.items());
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    /// Issues an API key through the admin API; returns (key, party id).
    pub async fn issue_key(&self, admin_key: &str, role: &str, label: &str, party: Option<&str>) -> (String, String) {
        let mut body = json!({"role": role, "label": label});
        if let Some(party) = party {
            body["party_id"] = json!(party);
        }
        let r = self.post(admin_key, "/v1/admin/api-keys", &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "issuing a {role} key: {:#}", r.body);
        let key = r.body["key"].as_str().expect("key").to_owned();
        let party = r.body["party_id"].as_str().expect("party_id").to_owned();
        (key, party)
    }
}
