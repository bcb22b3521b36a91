//! alcove-api owns the HTTP face of the functions platform: the axum router
//! ([`app`]), the JSON it accepts and returns, bearer-token checks, the
//! OpenAPI document it serves, the operator console's files (`/ui/`), the
//! server loop that faces untrusted clients ([`serve`]), and a typed
//! blocking client for the CLI.
//!
//! It turns HTTP into calls on an [`alcove_engine::Engine`] and engine
//! results back into HTTP; it runs nothing itself.

mod auth;
pub mod cgi;
mod client;
mod config_routes;
mod console;
mod control;
mod endpoint;
mod errors;
mod monitor_routes;
mod preview;
mod routes;
mod sandbox_client;
mod sandbox_routes;
mod server;
pub mod wire;

pub use auth::token_proof;
pub use client::{Client, ClientError, EventStream, InvokeOutcome};
pub use config_routes::MAX_SECRET_BODY;
pub use console::CONTENT_SECURITY_POLICY;
pub use errors::ApiError;
pub use monitor_routes::MAX_EVENT_STREAMS;
pub use routes::{app, AppState};
pub use sandbox_client::Lines;
pub use server::{serve, BodyTimedOut, ServerLimits};

/// The OpenAPI 3.1 document describing /v1, served at /v1/openapi.json.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest invoke request body (the handler's stdin).
pub const MAX_INVOKE_BODY: usize = 6 << 20;
/// Largest deploy request body (the code archive, base64 inside JSON).
pub const MAX_DEPLOY_BODY: usize = 64 << 20;
