//! Secrets given as files: every secret flag's `--…-file` twin and every secret
//! `KEYGATE_X`'s `KEYGATE_X_FILE` twin, so that nothing secret sits in the process's
//! arguments or environment (Kubernetes Secret volumes, systemd's `LoadCredential=`, whose
//! files are under `$CREDENTIALS_DIRECTORY`, `%d` in a unit). A file's trailing newline is
//! not part of the secret. A file others could read is refused, naming its mode; a file
//! its group may read only with `--allow-group-readable-secret-files`.

use std::path::Path;

/// One secret setting: its flag and variable, the file twin's, and what it is called.
pub(super) struct Secret {
    pub flag: &'static str,
    pub what: &'static str,
}

impl Secret {
    /// `--flag / KEYGATE_FLAG`, as problems name it.
    fn named(&self) -> String {
        format!("--{} / KEYGATE_{}", self.flag, self.flag.to_uppercase().replace('-', "_"))
    }

    fn file_named(&self) -> String {
        format!("--{}-file / KEYGATE_{}_FILE", self.flag, self.flag.to_uppercase().replace('-', "_"))
    }

    /// The secret given as a value or as a file, not both; `None`: neither. Problems
    /// name the flags and the file, never the secret.
    pub fn either(
        &self,
        value: Option<String>,
        file: Option<&Path>,
        group_readable: bool,
        problems: &mut Vec<String>,
    ) -> Option<String> {
        match (value, file) {
            (Some(_), Some(_)) => {
                problems.push(format!("{} and {}: give one of the two, not both", self.named(), self.file_named()));
                None
            }
            (Some(value), None) => Some(value),
            (None, Some(path)) => match read(path, group_readable) {
                Ok(secret) => Some(secret),
                Err(why) => {
                    problems.push(format!("{}: the {} file {}: {why}", self.file_named(), self.what, path.display()));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// The value and its file twin together, when the file is read later (the admin token
    /// and digest key files, created on first start): a problem naming both; and the
    /// file's mode, when it is there already.
    pub fn not_both(&self, value: bool, file: Option<&Path>, group_readable: bool, problems: &mut Vec<String>) {
        match file {
            Some(_) if value => {
                problems.push(format!("{} and {}: give one of the two, not both", self.named(), self.file_named()))
            }
            Some(path) => self.check_mode(path, group_readable, problems),
            None => {}
        }
    }

    /// An existing file's mode; a missing one is no problem here (it is created later).
    pub fn check_mode(&self, path: &Path, group_readable: bool, problems: &mut Vec<String>) {
        if let Err(why) = private(path, group_readable) {
            problems.push(format!("{}: the {} file {}: {why}", self.file_named(), self.what, path.display()));
        }
    }
}

/// A private key file a flag names (read later, by the connection it is for): refused
/// as a secret's file is, naming `flag` and the mode, when others may read it.
pub(super) fn check_key_file(flag: &str, path: &Path, group_readable: bool, problems: &mut Vec<String>) {
    if let Err(why) = private(path, group_readable) {
        problems.push(format!("{flag}: the key file {}: {why}", path.display()));
    }
}

/// The secret a file holds, without its trailing newline.
fn read(path: &Path, group_readable: bool) -> Result<String, String> {
    private(path, group_readable)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({})", e.kind()))?;
    let secret = text.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&text);
    if secret.trim().is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(secret.to_owned())
}

/// Refuses a file that others may read or anyone but its owner may write; one its group
/// may read only when `group_readable`. A file that is not there passes (see callers).
fn private(path: &Path, group_readable: bool) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Through symlinks: Kubernetes mounts a Secret's files as links into `..data/`.
        let mode = match std::fs::metadata(path) {
            Ok(metadata) => metadata.permissions().mode() & 0o777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot be read ({})", e.kind())),
        };
        let others = mode & 0o007 != 0 || mode & 0o020 != 0;
        let group = mode & 0o040 != 0;
        if others || (group && !group_readable) {
            let who = if mode & 0o004 != 0 { "every local user" } else { "users besides its owner" };
            return Err(format!(
                "mode {mode:04o} lets {who} at the secret: make it 0600 or 0400 (chmod 600){}",
                if !others { ", or give --allow-group-readable-secret-files" } else { "" }
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, group_readable);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, contents: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_secret_file_loses_its_trailing_newline_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for (contents, secret) in
            [("s3cret\n", "s3cret"), ("s3cret\r\n", "s3cret"), ("s3cret", "s3cret"), (" a b \n", " a b ")]
        {
            assert_eq!(read(&file(dir.path(), "s", contents, 0o600), false).unwrap(), secret);
        }
        assert_eq!(read(&file(dir.path(), "e", "\n", 0o400), false).unwrap_err(), "is empty");
    }

    #[test]
    fn a_file_others_may_read_is_refused_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o604, 0o620, 0o606] {
            let err = read(&file(dir.path(), "s", "s3cret\n", mode), true).unwrap_err();
            assert!(err.contains(&format!("{mode:04o}")) && !err.contains("s3cret"), "{err}");
        }
        let group = file(dir.path(), "g", "s3cret\n", 0o640);
        assert!(read(&group, false).unwrap_err().contains("--allow-group-readable-secret-files"));
        assert_eq!(read(&group, true).unwrap(), "s3cret");
    }
}
