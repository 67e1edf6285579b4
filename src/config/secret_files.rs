//! The secrets keygate keeps in files of its own: read, or made on first start.

use super::{AdminTokenSource, DigestKeySource, MIN_ADMIN_TOKEN_LEN, MIN_DIGEST_KEY_LEN};
use anyhow::Context;
use std::path::Path;

/// The given token, or the one in the token file, creating the file on first start.
pub(crate) fn load_admin_token(source: &AdminTokenSource) -> anyhow::Result<String> {
    match source {
        AdminTokenSource::Given(token) => Ok(token.clone()),
        AdminTokenSource::File(path) => secret_file(path, "admin token", MIN_ADMIN_TOKEN_LEN, "kgadm_"),
    }
}

/// The given digest key, or the one in the digest key file, creating it on first start.
pub(crate) fn load_digest_key(source: &DigestKeySource) -> anyhow::Result<String> {
    match source {
        DigestKeySource::Given(key) => Ok(key.clone()),
        DigestKeySource::File(path) => secret_file(path, "digest key", MIN_DIGEST_KEY_LEN, "kgdk_"),
    }
}

/// A secret kept in a file: read, or made (random, mode 0600) when the file is missing.
fn secret_file(path: &Path, what: &str, min_len: usize, prefix: &str) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(secret) if secret.trim().len() >= min_len => return Ok(secret.trim().to_owned()),
        Ok(_) => anyhow::bail!("the {what} file {} holds fewer than {min_len} characters", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read the {what} file {}", path.display())),
    }
    let secret = format!("{prefix}{}", crate::domain::random_token(43)?);
    write_private(path, &secret).with_context(|| format!("cannot create the {what} file {}", path.display()))?;
    tracing::info!(path = %path.display(), "created a new {what} file");
    Ok(secret)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}
