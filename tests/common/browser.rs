//! A browser in front of the web router for handler tests: one session cookie,
//! form posts and JSON calls, and the bits of a page tests look at.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The client address every request comes from.
pub const CLIENT: &str = "192.0.2.7:50000";

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token of the first form on the page.
    pub fn csrf(&self) -> String {
        between(&self.body, "name=\"csrf\" value=\"", "\"")
    }

    /// The text of the first `<span class="secret">`.
    pub fn secret(&self) -> String {
        between(&self.body, "<span class=\"secret\">", "</span>")
    }
}

pub fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not in {text}"))
        + start.len();
    let len = text[from..].find(end).expect("end marker");
    text[from..from + len].to_owned()
}

/// A cookie jar of one session cookie (and any other cookies, such as the
/// trusted-browser one), in front of the router.
pub struct Browser {
    app: Router,
    pub cookie: Option<String>,
    /// The cookie's name as the server set it (`__Host-` prefixed over https).
    pub cookie_name: String,
    /// Cookies other than the session's, by name.
    pub others: std::collections::BTreeMap<String, String>,
    /// The address the web app sees the requests from.
    pub client: SocketAddr,
}

impl Browser {
    pub fn new(app: &Router) -> Self {
        Self::from_client(app, CLIENT)
    }

    /// A browser on another client address.
    pub fn from_client(app: &Router, client: &str) -> Self {
        Self {
            app: app.clone(),
            cookie: None,
            cookie_name: "postern_session".into(),
            others: Default::default(),
            client: client.parse().expect("addr"),
        }
    }

    pub async fn send(&mut self, mut request: Request<Body>) -> Page {
        request.extensions_mut().insert(ConnectInfo(self.client));
        let mut jar: Vec<String> = self
            .cookie
            .iter()
            .map(|cookie| format!("{}={cookie}", self.cookie_name))
            .collect();
        jar.extend(
            self.others
                .iter()
                .map(|(name, value)| format!("{name}={value}")),
        );
        if !jar.is_empty() {
            request
                .headers_mut()
                .insert(header::COOKIE, jar.join("; ").parse().expect("cookie"));
        }
        let response = self.app.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().expect("ascii");
            let (name, rest) = set.split_once('=').expect("name=value");
            let value = rest.split(';').next().unwrap_or("").to_owned();
            if name.ends_with("postern_session") {
                self.cookie_name = name.to_owned();
                self.cookie = (!value.is_empty()).then_some(value);
            } else if value.is_empty() {
                self.others.remove(name);
            } else {
                self.others.insert(name.to_owned(), value);
            }
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.send(Request::get(path).body(Body::empty()).expect("request"))
            .await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = serde_urlencoded::to_string(fields).expect("form");
        self.send(
            Request::post(path)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .expect("request"),
        )
        .await
    }

    pub async fn json(&mut self, method: &str, path: &str, csrf: Option<&str>, body: &str) -> Page {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = csrf {
            request = request.header("x-csrf-token", token);
        }
        self.send(request.body(Body::from(body.to_owned())).expect("request"))
            .await
    }

    /// Address and primary password on the login page.
    pub async fn password_step(&mut self, address: &str, password: &str) -> Page {
        let form = self.get("/login").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("address", address),
                ("password", password),
            ],
        )
        .await
    }

    /// Password, then a code on the second-step page.
    pub async fn code_step(&mut self, code: &str) -> Page {
        let form = self.get("/login/code").await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let csrf = form.csrf();
        self.post("/login/code", &[("csrf", &csrf), ("code", code)])
            .await
    }
}
