//! WHEP: a plain HTTP viewer (a WHEP player) calls a camera on the phonebook.
//!
//! `POST /whep/<callee>` with an `application/sdp` offer rings the camera like any other
//! caller: the phonebook sees a connection of its own that says `hello` (with the bearer
//! token as its token, so the phonebook's access rules apply as to any caller) and `call`.
//! A user token names the viewer at the device; otherwise it is "WHEP viewer". The request waits while the
//! camera rings; on accept it gets `201 Created` with the answer and a `Location`, on
//! decline `403` with the device's reason. `DELETE` on the location hangs up, `PATCH`
//! trickles the player's candidates, `OPTIONS` answers CORS and lists ICE servers.
//!
//! WHEP has no way to trickle the server's candidates to the player, so the device's
//! candidates (which it trickles as usual) are gathered for a moment and written into
//! the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::access::{Identity, Refused};
use super::connection::{ClientError, PhonebookConnection};
use super::hub::PhonebookHandle;
use super::local::LocalTransport;
use super::phonebook::ConnId;
use super::protocol::{ClientMessage, ErrorCode, IceCandidate, IceServer, Secret, ServerMessage};
pub use super::sdp::{fragment_candidates, with_candidates};

pub use super::protocol::MAX_SDP_BYTES;

/// How long a `POST` may wait for the camera to answer (its ring timeout decides first).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the device's trickled candidates are collected for the answer.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// Most WHEP sessions open at once on one phonebook.
const MAX_SESSIONS: usize = 64;

/// The caller name of a player when no tokens are configured.
const ANONYMOUS_VIEWER: &str = "WHEP viewer";

/// What WHEP's handlers share: the phonebook, reached through its handle, and the
/// sessions open on it.
#[derive(Clone)]
pub(super) struct WhepState {
    phonebook: PhonebookHandle,
    sessions: Arc<Whep>,
}

/// WHEP's routes on the phonebook behind `phonebook`, with its sessions kept in
/// `sessions`.
pub(super) fn routes(phonebook: PhonebookHandle, sessions: Arc<Whep>) -> Router {
    Router::new()
        .route("/whep/{callee}", post(offer).options(options))
        .route(
            "/whep/{callee}/{session}",
            patch(patch_session).delete(delete).options(options),
        )
        .with_state(WhepState {
            phonebook,
            sessions,
        })
}

/// A WHEP call's own connection to the phonebook, in-process.
type Local = PhonebookConnection<LocalTransport>;

impl WhepState {
    fn phonebook_transport(&self) -> LocalTransport {
        LocalTransport::open(&self.phonebook)
    }
}

/// The WHEP sessions open on a phonebook.
#[derive(Debug, Default)]
pub struct Whep {
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Debug)]
struct Session {
    conn: ConnId,
    callee: String,
    viewer: Identity,
    ended: CancellationToken,
}

impl Whep {
    /// Number of WHEP sessions in progress.
    pub fn sessions(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Who a request speaks for, by the phonebook's access rules, or why it may not.
fn viewer(server: &WhepState, headers: &HeaderMap) -> Result<Identity, Problem> {
    server
        .phonebook
        .identify(bearer(headers).as_deref())
        .map_err(Problem::from)
}

/// `OPTIONS /whep/<callee>`: CORS, what may be posted, and (to a known viewer) the ICE
/// servers as `Link` headers.
async fn options(State(server): State<WhepState>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert("accept-post", HeaderValue::from_static("application/sdp"));
    if viewer(&server, &headers).is_ok() {
        for link in ice_links(&server.phonebook.ice_servers()) {
            if let Ok(value) = HeaderValue::from_str(&link) {
                out.append(header::LINK, value);
            }
        }
    }
    with_cors(response)
}

/// `POST /whep/<callee>`: rings the camera with the player's offer and answers once it
/// is accepted.
async fn offer(
    State(server): State<WhepState>,
    Path(callee): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    with_cors(post_offer(server, callee, headers, body).await)
}

async fn post_offer(
    server: WhepState,
    callee: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let viewer = match viewer(&server, &headers) {
        Ok(viewer) => viewer,
        Err(refused) => return refused.into_response(),
    };
    if let Err(refused) = server.phonebook.may_call(&viewer, &callee) {
        return Problem::from(refused).into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/sdp") {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as application/sdp",
        );
    }
    if body.len() > MAX_SDP_BYTES {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("offers are limited to {MAX_SDP_BYTES} bytes"),
        );
    }
    let Ok(sdp) = std::str::from_utf8(&body) else {
        return problem(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text");
    };
    if let Err(why) = super::sdp::check_offer(sdp) {
        return problem(
            StatusCode::BAD_REQUEST,
            &format!("not a usable offer: {why}"),
        );
    }
    if !server.phonebook.has_callee(&callee) {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no camera is registered as {callee:?}"),
        );
    }
    if server.sessions.sessions() >= MAX_SESSIONS {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "too many WHEP sessions");
    }

    let call_id = format!("whep-{:016x}", rand::random::<u64>());
    // Dropping the connection closes it in the phonebook, and the call with it: so
    // whatever happens to this request from here (the player gives up while it rings,
    // the camera declines), nothing is left behind.
    let connection = PhonebookConnection::hello(
        server.phonebook_transport(),
        "whep",
        bearer(&headers).map(Secret),
    )
    .await;
    let mut connection = match connection {
        Ok(connection) => connection,
        Err(ClientError::Refused { code, message }) => {
            return Problem(status_of(code), message).into_response();
        }
        Err(err) => return problem(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    };
    let conn = connection.transport().conn();
    let call = ClientMessage::Call {
        call_id: call_id.clone(),
        callee: callee.clone(),
        meta: json!({"callerName": ANONYMOUS_VIEWER, "via": "whep"}),
        sdp: sdp.to_owned(),
    };
    if let Err(err) = connection.send(&call).await {
        return problem(StatusCode::SERVICE_UNAVAILABLE, &err.to_string());
    }
    info!(%callee, viewer = viewer.user().unwrap_or(ANONYMOUS_VIEWER), call = %call_id, "WHEP player calls");

    let answer =
        match tokio::time::timeout(ANSWER_TIMEOUT, wait_answer(&mut connection, &call_id)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(refused)) => return refused.into_response(),
            Err(_) => {
                return problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the camera did not answer in time",
                );
            }
        };
    let candidates = gather(&mut connection, &call_id).await;
    let answer = with_candidates(&answer, &candidates);

    let ended = CancellationToken::new();
    server.sessions.lock().insert(
        call_id.clone(),
        Session {
            conn,
            callee: callee.clone(),
            viewer,
            ended: ended.clone(),
        },
    );
    tokio::spawn(watch_session(
        server.clone(),
        call_id.clone(),
        connection,
        ended,
    ));

    let location = format!("/whep/{callee}/{call_id}");
    let mut response = (StatusCode::CREATED, answer).into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        out.insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("\"{call_id}\"")) {
        out.insert(header::ETAG, value);
    }
    out.insert(
        "accept-patch",
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    for link in ice_links(&server.phonebook.ice_servers()) {
        if let Ok(value) = HeaderValue::from_str(&link) {
            out.append(header::LINK, value);
        }
    }
    response
}

/// `PATCH /whep/<callee>/<session>`: the player's trickled candidates.
async fn patch_session(
    State(server): State<WhepState>,
    Path((callee, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let conn = match owned_session(&server, &callee, &session, &headers) {
        Ok(conn) => conn,
        Err(refused) => return with_cors(refused.into_response()),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/trickle-ice-sdpfrag") {
        return with_cors(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "candidates must be sent as application/trickle-ice-sdpfrag",
        ));
    }
    if body.len() > MAX_SDP_BYTES {
        return with_cors(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("fragments are limited to {MAX_SDP_BYTES} bytes"),
        ));
    }
    let text = String::from_utf8_lossy(&body);
    for candidate in fragment_candidates(&text) {
        server.phonebook.message(
            conn,
            ClientMessage::Candidate {
                call_id: session.clone(),
                candidate,
            },
        );
    }
    with_cors(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /whep/<callee>/<session>`: the player leaves.
async fn delete(
    State(server): State<WhepState>,
    Path((callee, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let conn = match owned_session(&server, &callee, &session, &headers) {
        Ok(conn) => conn,
        Err(refused) => return with_cors(refused.into_response()),
    };
    server.phonebook.message(
        conn,
        ClientMessage::Hangup {
            call_id: session.clone(),
            reason: "viewer left".into(),
        },
    );
    if let Some(entry) = server.sessions.lock().remove(&session) {
        entry.ended.cancel();
    }
    info!(%callee, call = %session, "WHEP player left");
    with_cors(StatusCode::OK.into_response())
}

fn owned_session(
    server: &WhepState,
    callee: &str,
    session: &str,
    headers: &HeaderMap,
) -> Result<ConnId, Problem> {
    let viewer = viewer(server, headers)?;
    let sessions = server.sessions.lock();
    match sessions.get(session) {
        Some(entry) if entry.callee == callee && entry.viewer == viewer => Ok(entry.conn),
        _ => Err(Problem(
            StatusCode::NOT_FOUND,
            "no such WHEP session".into(),
        )),
    }
}

/// Waits for the camera's answer to `call_id`, or the response telling why none came.
async fn wait_answer(connection: &mut Local, call_id: &str) -> Result<String, Problem> {
    while let Ok(Some(message)) = connection.recv().await {
        match message {
            ServerMessage::Accepted { call_id: id, sdp } if id == call_id => return Ok(sdp),
            ServerMessage::Declined {
                call_id: id,
                reason,
            } if id == call_id => {
                return Err(Problem(
                    StatusCode::FORBIDDEN,
                    format!("the camera declined: {reason}"),
                ));
            }
            ServerMessage::Hangup {
                call_id: id,
                reason,
            } if id == call_id => {
                return Err(Problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the call ended before it was answered: {reason}"),
                ));
            }
            ServerMessage::Error { code, message, .. } => {
                return Err(Problem(status_of(code), message));
            }
            other => debug!(?other, "WHEP call: waiting for the answer"),
        }
    }
    Err(Problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the phonebook is shutting down".into(),
    ))
}

/// Collects the device's candidates until it says it has no more, or for a short while.
async fn gather(connection: &mut Local, call_id: &str) -> Vec<IceCandidate> {
    let mut candidates = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER_TIMEOUT;
    while let Ok(Ok(Some(message))) = tokio::time::timeout_at(deadline, connection.recv()).await {
        match message {
            ServerMessage::Candidate {
                call_id: id,
                candidate: Some(candidate),
            } if id == call_id => candidates.push(candidate),
            ServerMessage::Candidate {
                call_id: id,
                candidate: None,
            } if id == call_id => break,
            ServerMessage::Hangup { call_id: id, .. } if id == call_id => break,
            _ => {}
        }
    }
    candidates
}

/// Keeps the session's phonebook connection open until either end hangs up.
async fn watch_session(
    server: WhepState,
    call_id: String,
    mut connection: Local,
    ended: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = ended.cancelled() => break,
            message = connection.recv() => match message {
                Ok(Some(ServerMessage::Hangup { call_id: id, reason })) if id == call_id => {
                    info!(call = %call_id, %reason, "the camera ended a WHEP call");
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
        }
    }
    server.sessions.lock().remove(&call_id);
    // Dropping `connection` closes it in the phonebook.
}

/// The HTTP status that tells a player what the phonebook's error `code` means.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::UnknownCallee => StatusCode::NOT_FOUND,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::TooManyCalls | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// `Link` header values for `servers`, as WHEP players read them.
fn ice_links(servers: &[IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(credential)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username=\"{user}\"; credential=\"{credential}\"; credential-type=\"password\""
                ));
            }
            links.push(link);
        }
    }
    links
}

/// A refusal: its status and the reason, sent as plain text.
#[derive(Debug)]
struct Problem(StatusCode, String);

impl From<Refused> for Problem {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unauthorized(why) => Problem(StatusCode::UNAUTHORIZED, why),
            Refused::Forbidden(why) => Problem(StatusCode::FORBIDDEN, why),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        problem(self.0, &self.1)
    }
}

fn problem(status: StatusCode, why: &str) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"peercam\""),
        );
    }
    response
}

/// Lets players on other origins use the endpoint.
fn with_cors(mut response: Response) -> Response {
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("OPTIONS, POST, PATCH, DELETE"),
    );
    out.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    out.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link, ETag, Accept-Patch, Accept-Post"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  tok-1 "),
        );
        assert_eq!(bearer(&headers).as_deref(), Some("tok-1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
    }
}
