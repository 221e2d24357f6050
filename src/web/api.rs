//! The JSON API under `/api/v1` (documented in `docs/openapi.yaml`): the same
//! actions as the pages, through the same `ops`. Authentication is the session
//! cookie; every mutation carries the session's token in `X-CSRF-Token` (get it,
//! and a session, from `GET /api/v1/session`).
//!
//! Every answer that is not a success is `{"error": "..."}` with its status, also
//! when the request itself is malformed: bodies, path segments and query strings
//! are read through [`ApiJson`], [`ApiPath`] and [`ApiQuery`], which turn axum's
//! plain-text rejections into [`ApiError`], and unknown paths and methods get the
//! same shape. `docs/openapi.yaml` lists every status.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ops::{self, CodeOutcome, PasswordOutcome, WebError};
use super::pages::admin_parse_since;
use super::passkeys::{self, Begun};
use super::recovery::{self, ConfirmOutcome};
use super::session::{Auth, WebSession};
use super::trusted;
use super::{Current, SessionCookie, WebState, with_cookie};
use crate::notices::{NoticeKind, NoticeKinds};
use crate::policy::{DomainStatus, Proof, Protocol, REAUTH_WINDOW_SECS, WebAccess};
use crate::store::{AppPasswordRecord, AuditFilter, DomainRecord, PasskeyRecord, RemoteActor};

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/session", get(session))
        .route("/login", post(login))
        .route("/login/code", post(login_code))
        .route("/login/email-code", post(login_email_code))
        .route("/login/enroll", post(enroll_confirm))
        .route("/login/passkey/begin", post(login_passkey_begin))
        .route("/login/passkey/finish", post(login_passkey_finish))
        .route("/logout", post(logout))
        .route("/account/sign-out-everywhere", post(sign_out_everywhere))
        .route("/account/two-step", get(two_step))
        .route("/account/two-step/totp", post(totp_start))
        .route("/account/two-step/totp/confirm", post(enroll_confirm))
        .route("/account/two-step/backup-codes", post(backup_codes))
        .route("/account/two-step/off", post(two_step_off))
        .route("/account/reauthenticate", post(reauthenticate))
        .route(
            "/account/reauthenticate/email-code",
            post(reauth_email_code),
        )
        .route(
            "/account/reauthenticate/passkey",
            post(reauth_passkey_begin),
        )
        .route("/account/passkeys", get(list_passkeys))
        .route("/account/passkeys/begin", post(passkey_begin))
        .route("/account/passkeys/finish", post(passkey_finish))
        .route("/account/passkeys/{id}", delete(remove_passkey))
        .route(
            "/account/two-step/email",
            post(recovery_add).delete(recovery_remove),
        )
        .route("/account/two-step/email/confirm", post(recovery_confirm))
        .route(
            "/account/app-passwords",
            get(list_app_passwords).post(create_app_password),
        )
        .route("/account/app-passwords/{id}", delete(revoke_app_password))
        .route(
            "/account/trusted-browsers",
            get(list_trusted_browsers).delete(forget_all_trusted_browsers),
        )
        .route(
            "/account/trusted-browsers/{id}",
            delete(forget_trusted_browser),
        )
        .route("/domain", get(domain))
        .route("/domain/two-step", post(domain_status))
        .route(
            "/domain/two-step/forced-from",
            delete(domain_cancel_schedule),
        )
        .route("/domain/trusted-browsers", post(domain_trusted_browsers))
        .route("/domain/notices", post(domain_notices))
        .route("/domain/users/{address}/reset", post(domain_reset))
        .route("/admin/login", post(admin_login))
        .route("/admin/domains", get(admin_domains).post(admin_add_domain))
        .route("/admin/domains/{name}/feature", post(admin_feature))
        .route("/admin/domains/{name}/admins", post(admin_add_admin))
        .route("/admin/impersonate", post(admin_impersonate))
        .route("/admin/audit", get(admin_audit))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API path".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "this API path does not take that method".into(),
            )
        })
}

/// An error as `{"error": "..."}` with its status.
pub struct ApiError(StatusCode, String);

impl ApiError {
    /// `{"error": message}` with `status`; also what the guard answers for API paths.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

/// A JSON request body; a malformed one is answered as an [`ApiError`] with
/// axum's status (400 bad JSON, 415 not `application/json`, 422 JSON of the wrong
/// shape, 413 too large) and its explanation.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let message = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "the body must be JSON, sent with Content-Type: application/json".to_owned()
        }
        _ => rejection.body_text(),
    };
    ApiError(rejection.status(), message)
}

/// A path parameter; one that does not parse is a 400 [`ApiError`].
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError(rejection.status(), rejection.body_text())
}

/// A query string; one that does not parse is a 400 [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError(rejection.status(), rejection.body_text())
}

impl From<WebError> for ApiError {
    fn from(err: WebError) -> Self {
        ApiError(err.status(), err.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        WebError::from(err).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn unauthorized() -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "sign in first".into())
}

fn live(current: &Current) -> Result<(String, WebSession), ApiError> {
    current.session.clone().ok_or_else(unauthorized)
}

/// A session whose password step is done and whose second step is due:
/// `(session id, address)`.
fn second_step_pending(current: &Current) -> Result<(String, String), ApiError> {
    match live(current)? {
        (
            id,
            WebSession {
                auth: Auth::SecondStep { address, .. },
                ..
            },
        ) => Ok((id, address)),
        _ => Err(ApiError(
            StatusCode::CONFLICT,
            "no second step pending".into(),
        )),
    }
}

/// A signed-in user's session.
struct ApiUser {
    id: String,
    address: String,
    impersonator: Option<String>,
    proved: Option<(Proof, i64)>,
    ip: Option<String>,
}

impl ApiUser {
    fn who(&self) -> ops::Requester<'_> {
        ops::Requester {
            address: &self.address,
            impersonator: self.impersonator.as_deref(),
            proved: self.proved,
            ip: self.ip.as_deref(),
        }
    }
}

/// A signed-in user's session and what the policy lets it do now (read from the
/// store for this request).
async fn signed_in(state: &WebState, current: &Current) -> Result<(ApiUser, WebAccess), ApiError> {
    let (id, session) = live(current)?;
    match session.auth {
        Auth::User {
            address,
            impersonator,
        } => {
            let access = ops::web_access(state, &address, impersonator.is_some()).await?;
            let user = ApiUser {
                id,
                address,
                impersonator,
                proved: session.proved,
                ip: current.ip_string(),
            };
            Ok((user, access))
        }
        _ => Err(unauthorized()),
    }
}

/// The signed-in user, if the policy gives the session full access now. One
/// who must enroll first gets 403.
async fn full_user(state: &WebState, current: &Current) -> Result<ApiUser, ApiError> {
    match signed_in(state, current).await? {
        (user, WebAccess::Full) => Ok(user),
        (_, WebAccess::EnrollOnly) => {
            Err(ApiError(StatusCode::FORBIDDEN, ops::ENROLL_FIRST.into()))
        }
        (_, WebAccess::Disabled) => Err(ApiError(
            StatusCode::FORBIDDEN,
            ops::ACCOUNT_DISABLED.into(),
        )),
    }
}

/// [`full_user`] as `(address, actor)`.
async fn user(state: &WebState, current: &Current) -> Result<(String, RemoteActor), ApiError> {
    let user = full_user(state, current).await?;
    let actor = user.who().actor();
    Ok((user.address, actor))
}

fn sysadmin(current: &Current) -> Result<(String, RemoteActor), ApiError> {
    match live(current)?.1.auth {
        Auth::Sysadmin { name } => {
            let actor = RemoteActor {
                name: format!("sysadmin:{name}"),
                ip: current.ip_string(),
            };
            Ok((name, actor))
        }
        _ => Err(unauthorized()),
    }
}

/// The session as the API describes it; a signed-in user's state (`user` or
/// `must_enroll`) is the policy's answer for this request. `proof`: how and
/// until when the session counts as recently re-authenticated (sensitive
/// actions of an enrolled user need `code`).
async fn describe(state: &WebState, session: &WebSession) -> Result<serde_json::Value, ApiError> {
    let proof = session.proved.map(|(kind, at)| {
        let kind = match kind {
            Proof::SecondFactor => "code",
            Proof::PrimaryPassword => "password",
        };
        json!({ "kind": kind, "until": at + REAUTH_WINDOW_SECS })
    });
    Ok(match &session.auth {
        Auth::Anonymous => json!({ "state": "anonymous" }),
        Auth::SecondStep { address, .. } => json!({ "state": "second_step", "address": address }),
        Auth::User {
            address,
            impersonator,
        } => match ops::web_access(state, address, impersonator.is_some()).await? {
            WebAccess::EnrollOnly => json!({ "state": "must_enroll", "address": address }),
            WebAccess::Full | WebAccess::Disabled => json!({
                "state": "user", "address": address, "impersonator": impersonator,
                "proof": proof,
            }),
        },
        Auth::Sysadmin { name } => json!({ "state": "sysadmin", "name": name }),
    })
}

/// The session (started if there is none) and its CSRF token.
async fn session(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    match &current.session {
        Some((_, s)) => Ok(
            Json(json!({ "csrf": s.csrf, "session": describe(&state, s).await? })).into_response(),
        ),
        None => {
            let (id, s) = state.sessions.create(Auth::Anonymous).await;
            Ok(with_cookie(
                SessionCookie::Set(id),
                Json(json!({ "csrf": s.csrf, "session": describe(&state, &s).await? })),
            ))
        }
    }
}

/// A rotated session: new cookie, and the new token in the body.
async fn rotated(state: &WebState, old: &str, auth: Auth) -> ApiResult {
    let (id, s) = state.sessions.rotate(old, auth).await;
    rotated_to(state, id, s).await
}

/// A session rotated by a sign-in step that proved who the user is.
async fn rotated_proved(state: &WebState, old: &str, auth: Auth, proof: Proof) -> ApiResult {
    let (id, s) = state.sessions.rotate_proved(old, auth, proof).await;
    rotated_to(state, id, s).await
}

async fn rotated_to(state: &WebState, id: String, s: WebSession) -> ApiResult {
    Ok(with_cookie(
        SessionCookie::Set(id),
        Json(json!({ "csrf": s.csrf, "session": describe(state, &s).await? })),
    ))
}

#[derive(Deserialize)]
struct LoginBody {
    address: String,
    password: String,
}

async fn login(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<LoginBody>,
) -> ApiResult {
    let (id, _) = live(&current)?;
    let trusted = current.trusted.as_deref();
    match ops::password_step(
        &state,
        &body.address,
        &body.password,
        current.client,
        trusted,
    )
    .await?
    {
        PasswordOutcome::Wrong => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong address or password".into(),
        )),
        PasswordOutcome::Next { auth, .. } => {
            rotated_proved(&state, &id, auth, Proof::PrimaryPassword).await
        }
    }
}

#[derive(Deserialize)]
struct CodeBody {
    code: String,
}

#[derive(Deserialize)]
struct SecondStepBody {
    code: String,
    /// "Don't ask again on this browser for 30 days".
    #[serde(default)]
    remember: bool,
}

async fn login_code(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<SecondStepBody>,
) -> ApiResult {
    let (id, address) = second_step_pending(&current)?;
    let ip = current.ip_string();
    let outcome = ops::second_step(&state, &address, &id, &body.code, ip.as_deref()).await?;
    second_step_done(&state, &current, body.remember, id, address, outcome).await
}

/// The answer to a second step (a code or a passkey): on success the session
/// is signed in under a new id.
async fn second_step_done(
    state: &WebState,
    current: &Current,
    remember: bool,
    id: String,
    address: String,
    outcome: CodeOutcome,
) -> ApiResult {
    match outcome {
        CodeOutcome::Accepted => {
            let (new_id, session, trust) =
                trusted::second_step_passed(state, current, &id, address, remember).await;
            Ok(trusted::attach(
                trust,
                rotated_to(state, new_id, session).await?,
            ))
        }
        CodeOutcome::Replayed => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "code already used".into(),
        )),
        CodeOutcome::Expired => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the e-mail code has expired or was already used; send a new one".into(),
        )),
        CodeOutcome::Locked => Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong codes; wait 15 minutes".into(),
        )),
        CodeOutcome::Wrong => Err(ApiError(StatusCode::UNAUTHORIZED, "wrong code".into())),
    }
}

/// Sends a sign-in code to the recovery address; the session id rotates.
async fn login_email_code(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (id, address) = second_step_pending(&current)?;
    let ip = current.ip_string();
    let sent_to = recovery::send_login_code(&state, &address, ip.as_deref()).await?;
    let (new_id, s) = state
        .sessions
        .rotate(
            &id,
            Auth::SecondStep {
                address,
                password_tag: current.password_tag(),
            },
        )
        .await;
    let session = describe(&state, &s).await?;
    Ok(with_cookie(
        SessionCookie::Set(new_id),
        (
            StatusCode::ACCEPTED,
            Json(json!({ "csrf": s.csrf, "session": session, "sent_to": sent_to })),
        ),
    ))
}

fn begun(begun: Begun) -> Response {
    Json(json!({ "ceremony": begun.ceremony, "options": begun.options })).into_response()
}

/// The browser's answer to a passkey ceremony (`navigator.credentials.create`
/// or `.get`, binary fields as base64url).
#[derive(Deserialize)]
struct PasskeyAnswer {
    ceremony: String,
    credential: serde_json::Value,
    /// At the second step: "Don't ask again on this browser for 30 days".
    #[serde(default)]
    remember: bool,
}

/// Second step with a passkey: the options for `navigator.credentials.get`.
async fn login_passkey_begin(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (_, address) = second_step_pending(&current)?;
    Ok(begun(passkeys::begin_login(&state, &address).await?))
}

/// Second step with a passkey: the browser's answer. A refusal counts toward
/// the same attempt lock as a wrong code.
async fn login_passkey_finish(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<PasskeyAnswer>,
) -> ApiResult {
    let (id, address) = second_step_pending(&current)?;
    let ip = current.ip_string();
    let outcome = passkeys::finish_login(
        &state,
        &address,
        &id,
        &body.ceremony,
        &body.credential,
        ip.as_deref(),
    )
    .await?;
    match outcome {
        CodeOutcome::Accepted | CodeOutcome::Locked => {
            second_step_done(&state, &current, body.remember, id, address, outcome).await
        }
        _ => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the passkey was not accepted, or the request expired".into(),
        )),
    }
}

async fn logout(State(state): State<WebState>, Extension(current): Extension<Current>) -> Response {
    if let Some((id, _)) = &current.session {
        state.sessions.remove(id).await;
    }
    with_cookie(SessionCookie::Clear, StatusCode::NO_CONTENT)
}

/// Ends every web session of the signed-in user on every node, this one
/// included.
async fn sign_out_everywhere(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    let ended = state
        .sessions
        .end_all(&user.address, &user.who().actor())
        .await?;
    Ok(with_cookie(
        SessionCookie::Clear,
        Json(serde_json::json!({ "ended": ended })),
    ))
}

/// The enrolling user, and whether the policy lets this session do nothing but
/// enroll (`forced`).
async fn enrolling(state: &WebState, current: &Current) -> Result<(ApiUser, bool), ApiError> {
    match signed_in(state, current).await? {
        (_, WebAccess::Disabled) => Err(ApiError(
            StatusCode::FORBIDDEN,
            ops::ACCOUNT_DISABLED.into(),
        )),
        (user, access) => Ok((user, access == WebAccess::EnrollOnly)),
    }
}

async fn two_step(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (address, _) = user(&state, &current).await?;
    let (domain, record) = ops::user_context(&state, &address).await?;
    let recovery = recovery::recovery_address(&state, record.id).await?;
    Ok(Json(json!({
        "enrolled": record.enrolled,
        "domain_status": ops::effective_status(domain.as_ref()),
        "forced_from": domain.as_ref().and_then(|d| d.policy().scheduled_forced(ops::unix_now())),
        "recovery_email": recovery.map(|r| json!({ "address": r.masked, "confirmed": r.confirmed })),
        "passkeys": passkeys::list(&state, &address).await?.len(),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct RecoveryBody {
    address: String,
}

/// Starts adding a recovery address: a code is sent to it.
async fn recovery_add(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<RecoveryBody>,
) -> ApiResult {
    let (user, _) = enrolling(&state, &current).await?;
    let ip = current.ip_string();
    let sent_to =
        recovery::add_recovery_address(&state, &user.who(), &body.address, ip.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "sent_to": sent_to }))).into_response())
}

async fn recovery_confirm(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<CodeBody>,
) -> ApiResult {
    let (user, forced) = enrolling(&state, &current).await?;
    match recovery::confirm_recovery_address(&state, &user.who(), &body.code).await? {
        ConfirmOutcome::Accepted => enrolled(&state, user, forced).await,
        ConfirmOutcome::Wrong { left } if left > 0 => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            format!("wrong code; {left} more tries before it is void"),
        )),
        ConfirmOutcome::Wrong { .. } => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong code; the code is now void: send a new one".into(),
        )),
        ConfirmOutcome::Void => Err(ApiError(
            StatusCode::GONE,
            "no valid code: it expired, was used or had too many wrong tries; send a new one"
                .into(),
        )),
    }
}

async fn recovery_remove(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (user, _) = enrolling(&state, &current).await?;
    recovery::remove_recovery_address(&state, &user.who()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn totp_start(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (user, _) = enrolling(&state, &current).await?;
    let pending = ops::pending_totp(&state, &user.who()).await?;
    Ok(Json(json!({ "secret": pending.secret, "otpauth_url": pending.otpauth })).into_response())
}

async fn enroll_confirm(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<CodeBody>,
) -> ApiResult {
    let (user, forced) = enrolling(&state, &current).await?;
    if !ops::confirm_totp(&state, &user.who(), &body.code).await? {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "wrong code".into()));
    }
    enrolled(&state, user, forced).await
}

/// A factor was just confirmed, which proves the user's second step. A forced
/// enrollment now has full access: the session id and token rotate with it.
async fn enrolled(state: &WebState, user: ApiUser, forced: bool) -> ApiResult {
    if !forced {
        state
            .sessions
            .record_proof(&user.id, Proof::SecondFactor)
            .await;
        return Ok(Json(json!({ "enrolled": true })).into_response());
    }
    let (id, s) = state
        .sessions
        .rotate_proved(
            &user.id,
            Auth::User {
                address: user.address,
                impersonator: None,
            },
            Proof::SecondFactor,
        )
        .await;
    Ok(with_cookie(
        SessionCookie::Set(id),
        Json(json!({ "csrf": s.csrf, "session": describe(state, &s).await? })),
    ))
}

#[derive(Serialize)]
struct PasskeyJson {
    id: i64,
    name: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl From<PasskeyRecord> for PasskeyJson {
    fn from(r: PasskeyRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
        }
    }
}

/// The user's passkeys (also while a forced enrollment is due: then none).
async fn list_passkeys(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (user, _) = enrolling(&state, &current).await?;
    let list: Vec<PasskeyJson> = passkeys::list(&state, &user.address)
        .await?
        .into_iter()
        .map(PasskeyJson::from)
        .collect();
    Ok(Json(list).into_response())
}

/// Begins adding a passkey: the options for `navigator.credentials.create`.
/// Also the first factor of a forced enrollment.
async fn passkey_begin(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (user, _) = enrolling(&state, &current).await?;
    Ok(begun(
        passkeys::begin_registration(&state, &user.who()).await?,
    ))
}

#[derive(Deserialize)]
struct NewPasskey {
    ceremony: String,
    name: String,
    credential: serde_json::Value,
}

/// Finishes adding a passkey. A forced enrollment it completes gives the
/// session full access under a new id and token (in the body, as a sign-in
/// step does).
async fn passkey_finish(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<NewPasskey>,
) -> ApiResult {
    let (user, forced) = enrolling(&state, &current).await?;
    let id = passkeys::finish_registration(
        &state,
        &user.who(),
        &body.ceremony,
        &body.name,
        &body.credential,
    )
    .await?;
    if !forced {
        return Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response());
    }
    let auth = Auth::User {
        address: user.address,
        impersonator: None,
    };
    let (new_id, s) = state
        .sessions
        .rotate_proved(&user.id, auth, Proof::SecondFactor)
        .await;
    let session = describe(&state, &s).await?;
    Ok(with_cookie(
        SessionCookie::Set(new_id),
        (
            StatusCode::CREATED,
            Json(json!({ "id": id, "csrf": s.csrf, "session": session })),
        ),
    ))
}

/// Removes one passkey: needs a recent proof, and is refused for the last
/// factor while the domain forces 2-Step.
async fn remove_passkey(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    passkeys::remove(&state, &user.who(), id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn backup_codes(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    let codes = ops::new_backup_codes(&state, &user.who()).await?;
    Ok(Json(json!({ "codes": codes })).into_response())
}

#[derive(Deserialize)]
struct ReauthBody {
    /// A TOTP, backup or recovery e-mail code (a user with a second factor).
    #[serde(default)]
    code: Option<String>,
    /// The primary password (a user without one).
    #[serde(default)]
    password: Option<String>,
    /// A passkey: the ceremony from `POST /account/reauthenticate/passkey`...
    #[serde(default)]
    ceremony: Option<String>,
    /// ...and the browser's answer to it.
    #[serde(default)]
    credential: Option<serde_json::Value>,
}

/// Confirms it is the user before sensitive actions (creating an app password
/// or backup codes, turning 2-Step off, removing a factor) for the next
/// [`REAUTH_WINDOW_SECS`].
async fn reauthenticate(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<ReauthBody>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    let outcome = match (body.ceremony, body.credential) {
        (Some(ceremony), Some(credential)) => {
            passkeys::reauthenticate(&state, &user.id, &user.who(), &ceremony, &credential).await?
        }
        _ => {
            let secret = body.code.or(body.password).unwrap_or_default();
            ops::reauthenticate(&state, &user.id, &user.who(), &secret, current.client).await?
        }
    };
    match outcome {
        ops::ReauthOutcome::Accepted(_) => Ok(Json(json!({
            "reauthenticated_until": ops::unix_now() + REAUTH_WINDOW_SECS,
        }))
        .into_response()),
        ops::ReauthOutcome::Refused(CodeOutcome::Locked) => Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong codes; wait 15 minutes".into(),
        )),
        ops::ReauthOutcome::Refused(CodeOutcome::Replayed) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "code already used".into(),
        )),
        ops::ReauthOutcome::Refused(_) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong code, password or passkey".into(),
        )),
    }
}

/// Begins a "confirm it is you" with a passkey; the answer goes to
/// `POST /account/reauthenticate` with the ceremony.
async fn reauth_passkey_begin(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    Ok(begun(passkeys::begin_reauth(&state, &user.who()).await?))
}

/// Mails a code to the confirmed recovery address, for `/account/reauthenticate`.
async fn reauth_email_code(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    if user.impersonator.is_some() {
        return Err(WebError::NotForImpersonator.into());
    }
    let sent_to = recovery::send_login_code(&state, &user.address, user.ip.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "sent_to": sent_to }))).into_response())
}

async fn two_step_off(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    ops::turn_off(&state, &user.who()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize)]
struct AppPasswordJson {
    id: i64,
    name: String,
    scopes: Vec<&'static str>,
    /// CIDRs; empty: anywhere.
    networks: Vec<String>,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    last_used_ip: Option<String>,
    last_used_protocol: Option<String>,
}

impl From<AppPasswordRecord> for AppPasswordJson {
    fn from(r: AppPasswordRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            scopes: r.scopes.protocols().map(Protocol::as_str).collect(),
            networks: r
                .networks
                .networks()
                .iter()
                .map(|n| n.to_string())
                .collect(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            last_used_ip: r.last_used_ip,
            last_used_protocol: r.last_used_protocol,
        }
    }
}

async fn list_app_passwords(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (address, _) = user(&state, &current).await?;
    let list: Vec<AppPasswordJson> = ops::app_passwords(&state, &address)
        .await?
        .into_iter()
        .map(AppPasswordJson::from)
        .collect();
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(default)]
    scopes: Option<Vec<Protocol>>,
    #[serde(default)]
    expires_days: Option<u32>,
    /// CIDRs (or addresses) it may be used from; left out or empty: anywhere.
    #[serde(default)]
    networks: Vec<String>,
}

async fn create_app_password(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    let scopes = match &body.scopes {
        None => crate::policy::Scopes::ALL,
        Some(list) => ops::scopes_from(
            list.contains(&Protocol::Imap),
            list.contains(&Protocol::Pop3),
            list.contains(&Protocol::Smtp),
        )?,
    };
    let networks = ops::networks_from(&body.networks.join(","))?;
    let issued = ops::create_app_password(
        &state,
        &user.who(),
        &body.name,
        scopes,
        body.expires_days,
        networks,
    )
    .await?;
    let password = issued.password.display();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": issued.id, "password": password.expose() })),
    )
        .into_response())
}

async fn revoke_app_password(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult {
    let (address, actor) = user(&state, &current).await?;
    ops::revoke_app_password(&state, &address, id, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_trusted_browsers(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    let list = trusted::list(&state, &user.address, &current).await?;
    Ok(Json(list).into_response())
}

async fn forget_trusted_browser(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    let cookie = trusted::forget(&state, &user.who(), id, &current).await?;
    Ok(trusted::attach(
        cookie,
        StatusCode::NO_CONTENT.into_response(),
    ))
}

async fn forget_all_trusted_browsers(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let user = full_user(&state, &current).await?;
    let (forgotten, cookie) = trusted::forget_all(&state, &user.who(), &current).await?;
    Ok(trusted::attach(
        cookie,
        Json(json!({ "forgotten": forgotten })).into_response(),
    ))
}

fn domain_json(d: &DomainRecord) -> serde_json::Value {
    json!({
        "domain": d.name,
        "feature": d.feature,
        "status": d.status,
        "effective_status": d.policy().effective_status(),
        "grace_until": d.grace_until,
        "forced_from": d.policy().scheduled_forced(ops::unix_now()),
        "trusted_browsers": d.trusted_browsers,
        "notices": notices_json(d.notices_off),
    })
}

/// Every notice kind, sent (true) or turned off (false).
fn notices_json(off: NoticeKinds) -> serde_json::Value {
    NoticeKind::ALL
        .iter()
        .map(|k| (k.as_str().to_owned(), json!(!off.contains(*k))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn domain_admin(
    state: &WebState,
    current: &Current,
) -> Result<(String, RemoteActor), ApiError> {
    let (address, actor) = user(state, current).await?;
    let domain = ops::administered_domain(state, &address).await?;
    Ok((domain, actor))
}

async fn domain(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (domain, _) = domain_admin(&state, &current).await?;
    let overview = ops::domain_overview(&state, &domain).await?;
    let users: Vec<serde_json::Value> = overview
        .users
        .iter()
        .map(|u| {
            json!({
                "user": u.address, "enrolled": u.enrolled, "disabled": u.disabled,
                "domain_admin": u.domain_admin, "app_passwords": u.app_passwords,
                "last_used_at": u.last_used_at,
            })
        })
        .collect();
    Ok(Json(json!({
        "domain": domain_json(&overview.domain),
        "primary_sessions": overview.primary_sessions,
        "enrolled_users": overview.counts.enrolled,
        "not_enrolled_users": overview.counts.not_enrolled,
        "users": users,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct StatusBody {
    status: DomainStatus,
    #[serde(default)]
    grace_days: Option<u32>,
    /// With `forced`: the date it takes effect (`YYYY-MM-DD` or RFC 3339).
    #[serde(default)]
    forced_from: Option<String>,
}

async fn domain_status(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<StatusBody>,
) -> ApiResult {
    let (domain, actor) = domain_admin(&state, &current).await?;
    match (body.status, body.forced_from) {
        (DomainStatus::Forced, Some(date)) => {
            if body.grace_days.is_some() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "give forced_from or grace_days, not both",
                ));
            }
            ops::schedule_forced(&state, &domain, &date, &actor).await?;
        }
        (_, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "forced_from goes with status forced",
            ));
        }
        (status, None) => {
            ops::set_domain_status(&state, &domain, status, body.grace_days, &actor).await?;
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Cancels a scheduled Forced still ahead (the domain goes back to Enabled).
async fn domain_cancel_schedule(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    let (domain, actor) = domain_admin(&state, &current).await?;
    ops::cancel_scheduled_forced(&state, &domain, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct TrustedBrowsersBody {
    allowed: bool,
}

/// "Remember trusted browsers": turning it off forgets every trusted browser
/// of the domain.
async fn domain_trusted_browsers(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<TrustedBrowsersBody>,
) -> ApiResult {
    let (domain, actor) = domain_admin(&state, &current).await?;
    let forgotten = state
        .store
        .set_domain_trusted_browsers(&domain, body.allowed, &actor)
        .await?;
    Ok(Json(json!({ "allowed": body.allowed, "forgotten": forgotten })).into_response())
}

#[derive(Deserialize)]
struct NoticesBody {
    #[serde(default)]
    off: Vec<String>,
    #[serde(default)]
    on: Vec<String>,
}

async fn domain_notices(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<NoticesBody>,
) -> ApiResult {
    let (domain, actor) = domain_admin(&state, &current).await?;
    let parse = |names: &[String]| -> Result<Vec<NoticeKind>, WebError> {
        names
            .iter()
            .map(|n| n.parse::<NoticeKind>().map_err(WebError::BadRequest))
            .collect()
    };
    let (off, on) = (parse(&body.off)?, parse(&body.on)?);
    if let Some(both) = off.iter().find(|k| on.contains(k)) {
        return Err(WebError::BadRequest(format!("{both} is in both off and on")).into());
    }
    let record = state
        .store
        .domain(&domain)
        .await?
        .ok_or(WebError::NotFound)?;
    let mut set = record.notices_off;
    for kind in off {
        set = set.with(kind);
    }
    for kind in on {
        set = set.without(kind);
    }
    ops::set_domain_notices(&state, &domain, set, &actor).await?;
    Ok(Json(json!({ "notices": notices_json(set) })).into_response())
}

async fn domain_reset(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiPath(address): ApiPath<String>,
) -> ApiResult {
    let (domain, actor) = domain_admin(&state, &current).await?;
    ops::reset_user(&state, &domain, &address, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct AdminLoginBody {
    name: String,
    password: String,
}

async fn admin_login(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<AdminLoginBody>,
) -> ApiResult {
    let (id, _) = live(&current)?;
    let ip = current.ip_string();
    if ops::sysadmin_login(&state, &body.name, &body.password, ip.as_deref()).await? {
        rotated(
            &state,
            &id,
            Auth::Sysadmin {
                name: body.name.trim().to_owned(),
            },
        )
        .await
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong name or password".into(),
        ))
    }
}

async fn admin_domains(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> ApiResult {
    sysadmin(&current)?;
    let list: Vec<serde_json::Value> = state
        .store
        .list_domains()
        .await?
        .iter()
        .map(domain_json)
        .collect();
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct DomainBody {
    domain: String,
}

async fn admin_add_domain(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<DomainBody>,
) -> ApiResult {
    let (_, actor) = sysadmin(&current)?;
    let added = state.store.add_domain(&body.domain, &actor).await?;
    Ok(Json(json!({ "added": added })).into_response())
}

#[derive(Deserialize)]
struct FeatureBody {
    on: bool,
}

async fn admin_feature(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<FeatureBody>,
) -> ApiResult {
    let (_, actor) = sysadmin(&current)?;
    state
        .store
        .set_domain_feature(&name, body.on, &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct AddressBody {
    address: String,
}

async fn admin_add_admin(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AddressBody>,
) -> ApiResult {
    let (_, actor) = sysadmin(&current)?;
    state
        .store
        .set_domain_admin(&name, &body.address, &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_impersonate(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiJson(body): ApiJson<AddressBody>,
) -> ApiResult {
    let (name, _) = sysadmin(&current)?;
    let (id, _) = live(&current)?;
    let ip = current.ip_string();
    let address = ops::impersonate(&state, &name, &body.address, ip.as_deref()).await?;
    rotated(
        &state,
        &id,
        Auth::User {
            address,
            impersonator: Some(name),
        },
    )
    .await
}

#[derive(Deserialize)]
struct AuditQuery {
    user: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

async fn admin_audit(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult {
    sysadmin(&current)?;
    let filter = AuditFilter {
        user: query.user.filter(|u| !u.trim().is_empty()),
        since: admin_parse_since(query.since.as_deref())?,
        limit: query.limit.unwrap_or(500).clamp(1, 5000),
    };
    let rows: Vec<serde_json::Value> = state
        .store
        .list_audit(filter)
        .await?
        .into_iter()
        .map(|r| {
            json!({ "id": r.id, "at": r.at, "actor": r.actor, "action": r.action,
                    "target": r.target, "detail": r.detail, "ip": r.ip })
        })
        .collect();
    Ok(Json(rows).into_response())
}
