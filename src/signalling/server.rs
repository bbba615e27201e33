//! The phonebook server: axum with the WebSocket endpoint `/ws`, the page served from the
//! binary, and `GET /api/callees` for scripts.
//!
//! The rules live in [`super::phonebook::Phonebook`]; the state the connections share is
//! the phonebook handle (`hub.rs`), which this module creates and hands to the WebSocket
//! layer (`socket.rs`) and to WHEP, whose routes it mounts. A connection is dropped for
//! what it does itself: flooding, not reading the answers to its own requests, or not
//! reading at all for [`super::limits::STALLED_AFTER`]; never for what others send it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::access::AccessSettings;
use super::hub::PhonebookHandle;
pub use super::limits::{CALLEE_RATE_FACTOR, Limits, MAX_FRAME_BYTES, RateLimit};
use super::local::LocalTransport;
use super::phonebook::IceSource;
use super::protocol::IceServer;
use super::whep::Whep;
use crate::web;

/// A phonebook server: the phonebook's state, and the WHEP sessions on it.
#[derive(Clone)]
pub struct PhonebookServer {
    handle: PhonebookHandle,
    whep: Arc<Whep>,
}

impl PhonebookServer {
    /// A server with an empty phonebook that hands `ice_servers` to its clients.
    pub fn new(ice_servers: Vec<IceServer>) -> Self {
        PhonebookServer {
            handle: PhonebookHandle::new(ice_servers),
            whep: Arc::default(),
        }
    }

    /// The same server, letting in only whom `access` allows (WHEP players included).
    pub fn with_access(self, access: AccessSettings) -> Self {
        PhonebookServer {
            handle: self.handle.with_access(access),
            ..self
        }
    }

    /// The same server, with the ICE servers for each client made by `source` (fresh
    /// time-limited TURN credentials, for instance).
    pub fn with_ice_source(self, source: IceSource) -> Self {
        PhonebookServer {
            handle: self.handle.with_ice_source(source),
            ..self
        }
    }

    /// The same server, with `limits`.
    pub fn with_limits(self, limits: Limits) -> Self {
        PhonebookServer {
            handle: self.handle.with_limits(limits),
            ..self
        }
    }

    /// A connection to this phonebook from inside the process, with no socket.
    pub fn connect_local(&self) -> LocalTransport {
        LocalTransport::open(&self.handle)
    }

    /// WHEP's sessions.
    pub fn whep(&self) -> &Whep {
        &self.whep
    }

    /// The axum router: `/`, the page's assets, `/ws`, `/api/callees` and `/whep/…`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/callees", get(list_callees))
            .route("/healthz", get(|| async { "ok" }))
            .route("/", get(|| async { asset("index.html") }))
            .route("/{file}", get(|axum::extract::Path(file): axum::extract::Path<String>| async move { asset(&file) }))
            .with_state(self.handle.clone())
            .merge(super::socket::routes(self.handle.clone()))
            .merge(super::whep::routes(self.handle.clone(), self.whep.clone()))
    }

    /// Serves plain HTTP on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        use axum::serve::ListenerExt;
        // Signalling is small messages: with Nagle on, one written while the last is
        // unacknowledged waits for the reader's delayed ACK (~40 ms per hop).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        self.serve_on(listener, shutdown).await
    }

    /// Serves on any listener (a [`crate::tls::TlsListener`] for HTTPS) until `shutdown`
    /// completes.
    pub async fn serve_on<L>(
        self,
        listener: L,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let addr = listener.local_addr()?;
        info!(%addr, "phonebook listening");
        let handle = self.handle.clone();
        let closing = handle.closing.clone();
        let signal = tokio::spawn(async move {
            shutdown.await;
            closing.cancel();
        });
        super::http::serve(
            listener,
            self.router(),
            handle.limits,
            handle.closing.clone(),
        )
        .await;
        signal.abort();
        // Upgraded connections are not HTTP's any more: close them ourselves.
        handle.closing.cancel();
        handle.connections.close();
        if tokio::time::timeout(Duration::from_secs(3), handle.connections.wait())
            .await
            .is_err()
        {
            warn!("some WebSocket connections did not close within 3 s");
        }
        Ok(())
    }

    /// Drops the connection that holds `name` (in any spelling), as the server drops a
    /// client it gives up on: its calls are hung up and its socket is closed at once.
    /// False when nobody holds the name.
    pub fn disconnect_callee(&self, name: &str) -> bool {
        self.handle.disconnect_callee(name)
    }
}

async fn list_callees(State(handle): State<PhonebookHandle>) -> Response {
    let callees = handle.callees();
    axum::Json(callees).into_response()
}

fn asset(file: &str) -> Response {
    match web::asset(file) {
        Some((body, content_type)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
