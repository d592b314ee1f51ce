//! `ferry keys migrate --config FILE`: askmscli's migration procedure. Plaintext secrets in a
//! server configuration (TOML) move into the root keystore and are blanked in the file; the
//! original is kept as a backup (mode 0600) beside it.
//!
//! Recognised keys, in any table: `content_protection_secret` (a user's SSEAR secret; the user
//! is the table's `name` value, or the table's key under `users`/`user`) and
//! `token_encryption_key` (the shared token key). A blank value (`""`) means "from the
//! keystore" and is skipped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Args;
use ferry_keystore::{Category, Keystore, Options, Owner, PutOptions, SecretBytes, time};
use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::{KeystorePaths, exit, keystore_error, out, stash_passphrase};
use crate::error::CliError;

/// Arguments of `ferry keys migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The server configuration file (TOML) to take plaintext secrets from.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    #[command(flatten)]
    paths: KeystorePaths,
}

/// A plaintext secret found in the configuration.
struct Found {
    /// Dotted path of the key, for messages.
    path: String,
    owner: Owner,
    category: Category,
    value: SecretBytes,
}

fn config_error(msg: String) -> CliError {
    CliError::new(exit::CONFIG, msg)
}

/// Collects and blanks the plaintext secrets of `table`; `path` names the table.
fn walk(
    table: &mut dyn TableLike,
    path: &mut Vec<String>,
    found: &mut Vec<Found>,
    problems: &mut Vec<String>,
) {
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    let name = table.get("name").and_then(Item::as_str).map(str::to_owned);
    for k in keys {
        let Some(item) = table.get_mut(&k) else {
            continue;
        };
        let here = if path.is_empty() { k.clone() } else { format!("{}.{k}", path.join(".")) };
        let category = match k.as_str() {
            "content_protection_secret" => Some(Category::Ssear),
            "token_encryption_key" => Some(Category::TokenKey),
            _ => None,
        };
        if let Some(category) = category {
            let Some(v) = item.as_str() else {
                problems.push(format!("{here} is not a string"));
                continue;
            };
            if v.is_empty() {
                continue;
            }
            let owner = if category == Category::TokenKey {
                Ok(Owner::Shared)
            } else {
                let from_path = match path.as_slice() {
                    [.., parent, user] if parent == "users" || parent == "user" => {
                        Some(user.clone())
                    }
                    _ => None,
                };
                match name.clone().or(from_path) {
                    Some(u) => Owner::user(&u).map_err(|e| format!("{here}: {e}")),
                    None => Err(format!(
                        "cannot tell which user {here} belongs to; add name = \"USER\" to its table"
                    )),
                }
            };
            match owner {
                Ok(owner) => {
                    found.push(Found {
                        path: here,
                        owner,
                        category,
                        value: SecretBytes::from_slice(v.as_bytes()),
                    });
                    if let Some(val) = item.as_value_mut() {
                        let decor = val.decor().clone();
                        *val = Value::from("");
                        *val.decor_mut() = decor;
                    }
                }
                Err(p) => problems.push(p),
            }
            continue;
        }
        if let Some(sub) = item.as_table_like_mut() {
            path.push(k.clone());
            walk(sub, path, found, problems);
            path.pop();
        } else if let Some(arr) = item.as_array_of_tables_mut() {
            for (i, t) in arr.iter_mut().enumerate() {
                path.push(format!("{k}[{i}]"));
                walk(t, path, found, problems);
                path.pop();
            }
        }
    }
}

fn backup_path(config: &Path) -> PathBuf {
    let stamp = time::rfc3339(time::now()).replace([':', '-'], "");
    let name = config.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    config.with_file_name(format!("{name}.bak-{stamp}"))
}

/// Reads the configuration through one descriptor, refusing what root must not act on: a
/// symbolic link (it is not followed), anything but a regular file, and a file in a directory
/// that other users could write to (they could swap the file between the read and the
/// replacement, or plant the backup's name). The bytes stay in zeroizing memory (they hold
/// plaintext secrets).
fn read_config(cfg: &Path) -> Result<(zeroize::Zeroizing<Vec<u8>>, std::fs::Metadata), CliError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: String| config_error(format!("cannot read {}: {e}", cfg.display()));
    let dir = match cfg.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    ferry_keystore::check_private_dir(dir).map_err(|e| keystore_error(e, None))?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(
            rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32,
        )
        .open(cfg)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                cannot("it is a symbolic link; pass the configuration file itself".into())
            } else {
                cannot(e.to_string())
            }
        })?;
    let meta = f.metadata().map_err(|e| cannot(e.to_string()))?;
    if !meta.is_file() {
        return Err(cannot("it is not a regular file".into()));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes).map_err(|e| cannot(e.to_string()))?;
    Ok((bytes, meta))
}

pub(crate) fn run(args: &MigrateArgs) -> Result<(), CliError> {
    let cfg = &args.config;
    let (original, meta) = read_config(cfg)?;
    let mode = meta.permissions().mode() & 0o7777;
    let text = std::str::from_utf8(&original)
        .map_err(|_| config_error(format!("{} is not UTF-8 text", cfg.display())))?;
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        config_error(format!("cannot parse {} as TOML: {}", cfg.display(), e.message()))
    })?;
    let mut found = Vec::new();
    let mut problems = Vec::new();
    walk(doc.as_table_mut(), &mut Vec::new(), &mut found, &mut problems);
    if !problems.is_empty() {
        return Err(config_error(format!(
            "{} was not changed: {}",
            cfg.display(),
            problems.join("; ")
        )));
    }
    if found.is_empty() {
        return out(format!("no plaintext secrets in {}; nothing to do", cfg.display()));
    }

    // 1. Keep the original (it still holds the plaintext secrets: mode 0600, never replaced).
    let mut backup = backup_path(cfg);
    let mut n = 1;
    loop {
        match ferry_keystore::write_new_file(&backup, &original, 0o600) {
            Ok(()) => break,
            Err(ferry_keystore::KeystoreError::AlreadyExists { .. }) if n < 100 => {
                n += 1;
                backup = backup_path(cfg).with_extension(format!("{n}"));
            }
            Err(e) => return Err(keystore_error(e, None)),
        }
    }

    // 2. Store the secrets.
    let mut opts = Options::new().actor("ferry keys migrate");
    if let Some(p) = stash_passphrase(&args.paths)? {
        opts = opts.passphrase(p);
    }
    let ks = Keystore::open_or_create_root(&args.paths.root_keystore, &opts)
        .map_err(|e| keystore_error(e, None))?;
    let mut stored = Vec::new();
    for f in found {
        let info = ks.put(&f.owner, f.category, f.value, &PutOptions::default()).map_err(|e| {
            keystore_error(e, None).hint(format!(
                "{} was not changed; the secrets stored so far are: {}",
                cfg.display(),
                if stored.is_empty() { "none".to_owned() } else { stored.join(", ") }
            ))
        })?;
        stored.push(format!("{} (from {})", info.label(), f.path));
    }

    // 3. Blank them in the configuration, atomically, keeping its mode and owner.
    use std::os::unix::fs::MetadataExt;
    let owner = Some((meta.uid(), meta.gid()));
    ferry_keystore::replace_file_owned(cfg, doc.to_string().as_bytes(), mode, owner).map_err(
        |e| {
            config_error(format!(
                "{e}; the secrets are in the keystore, the configuration still holds them"
            ))
        },
    )?;

    out(format!("moved {} secret(s) into root keystore {}:", stored.len(), ks.path().display()))?;
    for s in &stored {
        out(format!("  {s}"))?;
    }
    out(format!("blanked them in {}", cfg.display()))?;
    out(format!(
        "backup of the original: {} (mode 0600; it still holds the plaintext secrets: delete it \
         once the server runs from the keystore)",
        backup.display()
    ))
}
