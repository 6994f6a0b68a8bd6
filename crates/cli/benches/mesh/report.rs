//! What a scenario found: Markdown tables for people, JSON for machines.

use serde_json::{Value, json};

/// One table of a scenario's results.
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Raw figures behind the rows, keyed by row name.
    pub figures: Vec<(String, Value)>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Self {
        Self {
            title: title.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>, figures: Value) {
        self.figures.push((cells[0].clone(), figures));
        self.rows.push(cells);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        out.push_str(&format!("| {} |\n", self.columns.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(self.columns.len())));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        for note in &self.notes {
            out.push_str(&format!("\n{note}\n"));
        }
        out.push('\n');
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "title": self.title,
            "rows": self.figures.iter().map(|(name, v)| json!({"name": name, "figures": v})).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

/// Milliseconds with three decimals.
pub fn ms(micros: f64) -> String {
    format!("{:.3}", micros / 1000.0)
}

/// A difference in milliseconds, signed.
pub fn added_ms(micros: f64) -> String {
    format!("{:+.3}", micros / 1000.0)
}

/// A table's first figure, which the others are given as multiples of.
#[derive(Default)]
pub struct Baseline(Option<f64>);

impl Baseline {
    /// `value` against the baseline as "1.23×" ("—" if the baseline is 0);
    /// the first value given is the baseline.
    pub fn ratio(&mut self, value: f64) -> String {
        let base = *self.0.get_or_insert(value);
        if base > 0.0 {
            format!("{:.2}×", value / base)
        } else {
            "—".to_owned()
        }
    }
}

/// A count with thousands separators.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
