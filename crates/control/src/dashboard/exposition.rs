//! Prometheus's text exposition, read back: the samples a proxy's
//! `/stats/prometheus` serves, one per line (`name{label="value",...} 12`).
//! Comments and lines that do not parse are skipped.

use std::borrow::Cow;

/// A sample's labels, in the order written.
pub type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    labels: Labels<'a>,
    pub value: f64,
}

impl<'a> Sample<'a> {
    pub fn new(name: &'a str, labels: Labels<'a>, value: f64) -> Self {
        Self {
            name,
            labels,
            value,
        }
    }

    /// A label's value; empty when the sample lacks it.
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_ref())
    }
}

/// The samples of `text` whose metric name starts with `prefix`.
pub fn samples<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = Sample<'a>> {
    text.lines()
        .filter(move |line| line.starts_with(prefix))
        .filter_map(sample)
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(after) => labels(after)?,
        None => (Vec::new(), &line[name_end..]),
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `a="1",b="x\"y"}` and what follows the closing brace.
fn labels(mut text: &str) -> Option<(Labels<'_>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, after) = text.split_once("=\"")?;
        let (value, rest) = quoted(after)?;
        labels.push((key.trim(), value));
        text = rest;
    }
}

/// A label value up to its closing quote, unescaped (`\\`, `\"`, `\n`).
fn quoted(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '"') => {
                let raw = &text[..i];
                let value = if raw.contains('\\') {
                    Cow::Owned(unescape(raw))
                } else {
                    Cow::Borrowed(raw)
                };
                return Some((value, &text[i + 1..]));
            }
            _ => escaped = false,
        }
    }
    None
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            },
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_labels_escapes_and_timestamps_are_read() {
        let text = "# HELP istio_requests Requests\n# TYPE istio_requests counter\nistio_requests_total{reporter=\"destination\",response_code=\"200\",path=\"a\\\"b\\\\c\"} 12 1700000000\nistio_requests_total 3\nistio_requests_total{broken 1\nother_metric{a=\"b\"} 1\n";
        let got: Vec<Sample> = samples(text, "istio_requests_total").collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].label("reporter"), "destination");
        assert_eq!(got[0].label("path"), "a\"b\\c");
        assert_eq!(got[0].label("missing"), "");
        assert_eq!(got[0].value, 12.0);
        assert_eq!(got[1].value, 3.0);
    }
}
