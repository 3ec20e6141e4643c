//! Shared by the loopback-port integration tests: a runtime config with its
//! state under a tempdir, and an app served on a free loopback port.

use std::path::{Path, PathBuf};

use sandpool_runtime::Config;

/// A config with `token`, data under `dir` and `home` as the user's home
/// (relative paths resolve there, never against the real $HOME).
pub fn config(token: &str, dir: &Path, home: PathBuf) -> Config {
    Config {
        access_token: Some(token.into()),
        data_dir: dir.join("d"),
        home: Some(home),
        ..Config::default()
    }
}

/// Serve `app` on a free loopback port until the test ends; its base URL.
pub async fn listen(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(sandpool_runtime::serve_app(l, app, std::future::pending()));
    base
}
