//! `alcove serve`: the functions daemon. HTTP on loopback by default; any
//! other address needs a token.

use alcove_api::{app, AppState};
use alcove_engine::{Engine, EngineConfig};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub image_store: Option<PathBuf>,
    pub max_running: Option<usize>,
    pub max_queued: Option<usize>,
}

fn read_token(options: &ServeOptions) -> anyhow::Result<Option<String>> {
    let token = match (&options.token, &options.token_file) {
        (Some(_), Some(_)) => bail!("give --token or --token-file, not both"),
        (Some(t), None) => Some(t.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            Some(text.trim().to_owned())
        }
        (None, None) => std::env::var("ALCOVE_TOKEN").ok(),
    };
    if let Some(t) = &token {
        if t.len() < 16 || t.bytes().any(|b| !b.is_ascii_graphic()) {
            bail!("the token must be at least 16 printable characters without spaces (try: head -c 24 /dev/urandom | base64)");
        }
    }
    if token.is_none() && !options.listen.ip().is_loopback() {
        bail!(
            "listening on {} (not loopback) needs a token: pass --token-file FILE (or set $ALCOVE_TOKEN), \
             and clients send 'Authorization: Bearer TOKEN'",
            options.listen
        );
    }
    Ok(token)
}

pub fn run(options: ServeOptions) -> anyhow::Result<()> {
    let token = read_token(&options)?;
    let mut config = EngineConfig::new(options.data_dir.clone());
    if let Some(n) = options.max_running {
        config.max_running = n.max(1);
    }
    if let Some(n) = options.max_queued {
        config.max_queued = n;
    }
    if let Some(dir) = options
        .image_store
        .clone()
        .or_else(|| std::env::var_os("ALCOVE_IMAGES").map(PathBuf::from))
    {
        config.image_store = dir;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("alcove-serve")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let engine = Engine::open(config).with_context(|| {
            format!("opening the data directory {}", options.data_dir.display())
        })?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| {
                format!(
                    "listening on {} (is another daemon there? pick one with --listen)",
                    options.listen
                )
            })?;
        let address = listener.local_addr().context("reading the bound address")?;
        eprintln!(
            "alcove: serving http://{address} (data in {}, {}token)",
            options.data_dir.display(),
            if token.is_some() { "" } else { "no " }
        );
        let state = AppState {
            engine,
            token: token.map(Arc::from),
        };
        axum::serve(listener, app(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")?;
        eprintln!("alcove: stopped");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM: the server then stops accepting and
/// finishes the requests it has.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
