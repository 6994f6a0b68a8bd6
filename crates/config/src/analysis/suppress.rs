//! `--suppress CODE=Kind namespace/name`: silence a code for matching objects; `*` in
//! the name matches any run of characters.

use super::{Code, Message};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    code: String,
    pattern: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuppressionError {
    #[error(
        "{0:?} is not a valid suppression: expected CODE=RESOURCE, such as IST0102=\"Namespace default\""
    )]
    Syntax(String),
}

impl std::str::FromStr for Suppression {
    type Err = SuppressionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split('=').collect();
        match parts.as_slice() {
            [code, pattern] if !code.is_empty() => Ok(Self {
                code: (*code).to_owned(),
                pattern: (*pattern).to_owned(),
            }),
            _ => Err(SuppressionError::Syntax(text.to_owned())),
        }
    }
}

impl Suppression {
    /// Whether the code exists (an unknown one suppresses nothing).
    pub fn known_code(&self) -> bool {
        Code::from_id(&self.code).is_some()
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn suppresses(&self, message: &Message) -> bool {
        message.code.id() == self.code
            && message
                .object
                .as_ref()
                .is_some_and(|o| glob(&self.pattern, &o.to_string()))
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, rest) = (parts[0], &parts[1..]);
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let (last, middle) = rest.split_last().map_or(("", &[][..]), |(l, m)| (*l, m));
    for part in middle {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("Namespace default", "Namespace default"));
        assert!(glob("Pod testing/*", "Pod testing/mypod"));
        assert!(glob("*", "anything at all"));
        assert!(glob(
            "VirtualService */reviews",
            "VirtualService default/reviews"
        ));
        assert!(!glob("Pod testing/*", "Pod other/mypod"));
        assert!(!glob("Namespace default", "Namespace defaults"));
    }

    #[test]
    fn parses() {
        assert!("IST0102=Namespace default".parse::<Suppression>().is_ok());
        assert!("IST0102".parse::<Suppression>().is_err());
        assert!("a=b=c".parse::<Suppression>().is_err());
    }
}
