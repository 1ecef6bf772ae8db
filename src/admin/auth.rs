//! The admin API's bearer token: read once from `admin.token_file`, compared in constant time
//! (a timing difference must not reveal how much of a guess was right).

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It could not be read.
    #[error("cannot read the admin token file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It holds nothing but whitespace.
    #[error("the admin token file {path:?} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The token `/api/*` requires.
pub struct AdminToken(Vec<u8>);

impl AdminToken {
    /// Reads the token from `path` (surrounding whitespace, such as a final newline, ignored).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(text.trim()).ok_or_else(|| TokenError::Empty {
            path: path.to_path_buf(),
        })
    }

    /// A token from its text; `None` if it is empty.
    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| Self(token.as_bytes().to_vec()))
    }

    /// Whether an `Authorization` header value (`Bearer <token>`) carries this token.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(scheme_end) = value.iter().position(|&byte| byte == b' ') else {
            return false;
        };
        let (scheme, rest) = value.split_at(scheme_end);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return false;
        }
        let given = rest.trim_ascii();
        // Lengths may differ in time; the bytes may not.
        given.len() == self.0.len() && bool::from(given.ct_eq(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = AdminToken::new("s3cret").unwrap();
        assert!(token.admits(Some(b"Bearer s3cret")));
        assert!(token.admits(Some(b"bearer   s3cret ")));
        assert!(!token.admits(None));
        assert!(!token.admits(Some(b"Bearer s3cre")));
        assert!(!token.admits(Some(b"Bearer s3cret2")));
        assert!(!token.admits(Some(b"Basic s3cret")));
        assert!(!token.admits(Some(b"s3cret")));
        assert!(AdminToken::new("").is_none());
    }

    #[test]
    fn the_file_is_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("iw-token-test-{}", std::process::id()));
        std::fs::write(&path, "abc\n").unwrap();
        assert!(AdminToken::from_file(&path)
            .unwrap()
            .admits(Some(b"Bearer abc")));
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            AdminToken::from_file(&path),
            Err(TokenError::Empty { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            AdminToken::from_file(&path),
            Err(TokenError::Read { .. })
        ));
    }
}
