//! What can go wrong with a warm function, in words its owner can act on.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("cannot install alcove's runtime files ({what})")]
    Runtime {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare the template ({what})")]
    Prepare {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the template")]
    Start(#[source] alcove_sandbox::SandboxError),
    #[error(
        "the function's initialisation ended before it said ready ({how}); its stderr:\n{stderr}"
    )]
    InitFailed { how: String, stderr: String },
    #[error("the function did not say ready within {seconds} s (raise --init-timeout if it needs longer); its stderr:\n{stderr}")]
    InitTimeout { seconds: u64, stderr: String },
    #[error("the template had {count} threads when it said ready, but fork copies only the calling one: start threads in the handler, not during initialisation")]
    Threaded { count: u32 },
    #[error("cannot read the template's state from /proc")]
    Facts(#[source] crate::verify::VerifyError),
    #[error("alcove refused the template's copies: {reason}")]
    CopiesRefused { reason: String },
    #[error("the template made no copy within {seconds} s{detail}")]
    NoCopy { seconds: u64, detail: String },
    #[error("the template is gone ({why})")]
    Gone { why: String },
    #[error("the warm memory budget ({limit}) is spent by other templates and their copies (alcove serve --warm-memory)")]
    Budget { limit: String },
    #[error("the warm copy could not run the request")]
    Run(#[source] alcove_sandbox::SandboxError),
}
