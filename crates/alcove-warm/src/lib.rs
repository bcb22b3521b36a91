//! alcove-warm owns warm starts: a function's template (an ordinary sandbox in
//! which the function has run its initialisation and said `ready`), the copies
//! it forks on request, the checks every copy passes before it is given a
//! request, and the small pool of checked copies kept ready per function.
//!
//! It speaks the protocol in docs/warm-protocol.md. It trusts nothing the
//! template or a copy says about itself: what it checks, it reads from the
//! kernel (`SO_PEERCRED`, `/proc`). It does not decide which functions are
//! warm or build their specs (the engine does), and it runs sandboxes only
//! through alcove-sandbox.

mod error;
mod pool;
pub mod runtime;
mod template;
pub mod verify;

pub use error::WarmError;
pub use pool::Budget;
pub use template::{gc_sockets, Template, TemplateSpec, SOCKET_DIR};

/// What to do when a template goes on its own (the engine rebuilds it).
#[derive(Clone)]
pub struct GoneHook(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for GoneHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GoneHook")
    }
}
