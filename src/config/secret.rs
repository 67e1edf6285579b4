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
    use std::io::Read;
    // Checked by name first: opening a FIFO would wait for a writer.
    private(path, group_readable)?;
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot be read ({})", e.kind()))?;
    // Then the file opened, in case the name was pointed elsewhere in between.
    let metadata = file.metadata().map_err(|e| format!("cannot be read ({})", e.kind()))?;
    check(&metadata, group_readable)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| format!("cannot be read ({})", e.kind()))?;
    let secret = text.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&text);
    if secret.trim().is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(secret.to_owned())
}

/// Refuses a file that others may read or anyone but its owner may write, one its group
/// may read unless `group_readable`, and anything but a regular file (a FIFO would hold
/// start-up until something writes to it). Through symlinks: Kubernetes mounts a
/// Secret's files as links into `..data/`, and a link is judged by the file it names.
/// A file that is not there passes (see callers).
fn private(path: &Path, group_readable: bool) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(metadata) => check(&metadata, group_readable),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot be read ({})", e.kind())),
    }
}

fn check(metadata: &std::fs::Metadata, group_readable: bool) -> Result<(), String> {
    if !metadata.is_file() {
        #[cfg(unix)]
        let fifo = std::os::unix::fs::FileTypeExt::is_fifo(&metadata.file_type());
        #[cfg(not(unix))]
        let fifo = false;
        let what = if fifo {
            "a FIFO"
        } else if metadata.is_dir() {
            "a directory"
        } else {
            "a device or socket"
        };
        return Err(format!("is {what}, not a regular file: give the file that holds the secret"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
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
    let _ = group_readable;
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

    /// guards: a link is judged by the file it names (a link to a world-readable file is
    /// refused; a Kubernetes-style link to a private file is read).
    #[test]
    fn a_symlink_is_judged_by_the_file_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let open = file(dir.path(), "world", "s3cret\n", 0o644);
        let private = file(dir.path(), "private", "s3cret\n", 0o400);
        for (target, link) in [(&open, "to-world"), (&private, "to-private")] {
            std::os::unix::fs::symlink(target, dir.path().join(link)).unwrap();
        }
        let refused = read(&dir.path().join("to-world"), true).unwrap_err();
        assert!(refused.contains("mode 0644"), "{refused}");
        assert_eq!(read(&dir.path().join("to-private"), false).unwrap(), "s3cret");
    }

    /// guards: a FIFO (or a directory) is refused at once, naming what it is, rather than
    /// holding start-up until something writes to it. A hang is caught by the wait
    /// below, which asserts no speed.
    #[test]
    fn a_fifo_or_a_directory_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg("-m").arg("600").arg(&fifo).status().unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(read(&path, false)).unwrap());
        let refused = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("reading a FIFO returns without waiting for a writer");
        assert_eq!(refused.unwrap_err(), "is a FIFO, not a regular file: give the file that holds the secret");
        let mut problems = Vec::new();
        Secret { flag: "admin-token", what: "admin token" }.check_mode(&fifo, false, &mut problems);
        assert!(problems[0].contains("is a FIFO"), "{problems:?}");
        assert!(read(dir.path(), false).unwrap_err().starts_with("is a directory"));
    }
}
