//! `sandpool key create|list|revoke`: the API keys of the gateway beside
//! the platform key. Keys are stored hashed in DATA_DIR/keys/keys.json
//! (file 0600, directory 0700); a running `serve` picks changes up at once.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;
use sandpool_gateway::tenancy;

#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    cmd: KeyCmd,
    #[command(flatten)]
    dir: crate::datadir::DataDirArg,
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Create a key and print it (shown this once; only its hash is kept).
    Create {
        /// A name to list and revoke it by.
        #[arg(long, default_value = "")]
        name: String,
        /// The key sees and acts on every key's sandboxes.
        #[arg(long)]
        admin: bool,
    },
    /// List the keys (id, name, role, creation time; never the keys).
    List,
    /// Revoke a key by id or name: refused from the next request on.
    Revoke { id: String },
}

/// The keys file of a platform on `data_dir`.
pub fn keys_file(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("keys.json")
}

/// A new API key: `e2b_` + 40 hex (the shape E2B SDKs accept; fine for OpenSandbox).
pub fn new_key() -> String {
    let hex = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    format!("e2b_{}", &hex[..40])
}

pub fn run(a: KeyArgs) -> anyhow::Result<()> {
    let path = keys_file(&a.dir.data_dir);
    match a.cmd {
        KeyCmd::Create { name, admin } => {
            let key = new_key();
            let e = tenancy::add_key(&path, &key, &name, admin)?;
            crate::say(format!(
                "created {} key {} {}(stored hashed in {}; shown only now)",
                if admin { "admin" } else { "user" },
                e.id,
                if name.is_empty() {
                    String::new()
                } else {
                    format!("named {name} ")
                },
                path.display()
            ));
            println!("{key}");
        }
        KeyCmd::List => {
            println!("{:<18} {:<20} {:<6} CREATED", "ID", "NAME", "ROLE");
            for k in tenancy::list_keys(&path)? {
                println!(
                    "{:<18} {:<20} {:<6} {}",
                    k.id,
                    k.name,
                    if k.admin { "admin" } else { "user" },
                    sandpool_gateway::rfc3339_ms(k.created_unix_ms)
                );
            }
        }
        KeyCmd::Revoke { id } => {
            if !tenancy::revoke_key(&path, &id)? {
                bail!("no key {id} in {}", path.display());
            }
            crate::say(format!("revoked key {id}"));
        }
    }
    Ok(())
}
