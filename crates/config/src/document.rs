//! Splitting a file into YAML documents and parsing each into a `Node`.
//!
//! Each document is parsed on its own so that one malformed document does not hide
//! the objects around it; the split also gives every document its starting line.

use crate::node::Node;

/// One parsed document, or why it could not be parsed.
#[derive(Debug)]
pub enum Parsed {
    Document(Node),
    /// Only comments or whitespace: nothing to read.
    Empty,
    Malformed {
        line: u32,
        message: String,
    },
}

/// Why a file cannot be read as text at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("binary file (contains NUL bytes); expected YAML or JSON")]
    Binary,
    #[error("not UTF-8 text (invalid byte at offset {0}); expected YAML or JSON")]
    NotUtf8(usize),
}

/// Checks that `bytes` are text a YAML parser should see.
pub fn as_text(bytes: &[u8]) -> Result<&str, TextError> {
    if bytes.contains(&0) {
        return Err(TextError::Binary);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| TextError::NotUtf8(e.valid_up_to()))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Parses every document of a YAML (or JSON) stream, in order.
pub fn parse_stream(text: &str) -> Vec<Parsed> {
    split(text)
        .into_iter()
        .map(|(first_line, chunk)| parse_one(first_line, chunk))
        .collect()
}

/// Splits at `---` document markers: (0-based line where the chunk starts, chunk).
fn split(text: &str) -> Vec<(u32, &str)> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 0u32;
    let mut offset = 0;
    for (line_no, line) in (0u32..).zip(text.split_inclusive('\n')) {
        if offset > start && is_document_start(line) {
            chunks.push((start_line, &text[start..offset]));
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
    }
    chunks.push((start_line, &text[start..]));
    chunks
}

fn is_document_start(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
}

fn is_blank(chunk: &str) -> bool {
    chunk.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

fn parse_one(first_line: u32, chunk: &str) -> Parsed {
    if is_blank(chunk) {
        return Parsed::Empty;
    }
    match serde_saphyr::from_str::<Node>(chunk) {
        Ok(mut node) => {
            node.shift_lines(first_line);
            Parsed::Document(node)
        }
        Err(err) => {
            let err = err.without_snippet();
            let line = err
                .location()
                .map_or(1, |l| u32::try_from(l.line()).unwrap_or(1).max(1));
            Parsed::Malformed {
                line: line + first_line,
                message: yaml_message(&err.to_string()),
            }
        }
    }
}

/// serde-saphyr prefixes its messages with the position, which we print ourselves.
fn yaml_message(raw: &str) -> String {
    let text = raw.strip_prefix("error: ").unwrap_or(raw);
    let text = match text.split_once(": ") {
        Some((position, rest)) if position.starts_with("line ") => rest,
        _ => text,
    };
    let first = text.lines().next().unwrap_or(text);
    let first = first.split(" at line ").next().unwrap_or(first);
    format!("malformed YAML: {first}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(parsed: &[Parsed]) -> Vec<Option<u32>> {
        parsed
            .iter()
            .map(|p| match p {
                Parsed::Document(n) => Some(n.line),
                Parsed::Malformed { line, .. } => Some(*line),
                Parsed::Empty => None,
            })
            .collect()
    }

    #[test]
    fn documents_keep_their_file_lines() {
        let text = "a: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n---\nd: [1\ne: 2\n---\nf: 4\n";
        let parsed = parse_stream(text);
        assert_eq!(
            lines(&parsed),
            vec![Some(1), None, Some(5), Some(9), Some(11)]
        );
        assert!(
            matches!(&parsed[3], Parsed::Malformed { message, .. } if message.starts_with("malformed YAML"))
        );
    }

    #[test]
    fn marker_must_stand_alone() {
        assert_eq!(split("a: '---x'\n---x: 1\n").len(), 1);
        assert_eq!(split("a: 1\n--- \nb: 2\n").len(), 2);
    }

    #[test]
    fn refuses_binary_and_non_utf8() {
        assert_eq!(as_text(b"a\0b"), Err(TextError::Binary));
        assert_eq!(as_text(b"ok: \xff"), Err(TextError::NotUtf8(4)));
        assert_eq!(as_text("\u{feff}a: 1".as_bytes()), Ok("a: 1"));
    }
}
