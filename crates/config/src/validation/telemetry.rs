//! Telemetry rules.

use crate::path::FieldPath;
use crate::telemetry::{MetricSelector, ProviderRef, TagOperation, Telemetry};
use crate::validation::Report;
use crate::validation::shared;
use crate::validation::syntax;

const MIN_LENGTH: &str = "in body should be at least 1 chars long";

pub fn validate(t: &Telemetry, at: &FieldPath, report: &mut Report) {
    shared::policy_targets(
        t.selector.is_some(),
        t.target_ref.as_ref(),
        t.target_refs.as_ref(),
        at,
        report,
    );
    shared::workload_selector(t.selector.as_ref(), &at.field("selector"), report);
    for (i, metrics) in t.metrics.iter().enumerate() {
        let here = at.field("metrics").index(i);
        providers(&metrics.providers, &here.field("providers"), report);
        if let Some(interval) = metrics.reporting_interval {
            report.check(&here.field("reportingInterval"), syntax::duration(interval));
        }
        for (j, overrides) in metrics.overrides.iter().enumerate() {
            let over = here.field("overrides").index(j);
            if let Some(selector) = &overrides.selector {
                metric_selector(selector, &over.field("match"), report);
            }
            for (name, tag) in &overrides.tag_overrides {
                let tag_at = over.field("tagOverrides").field(name);
                if name.is_empty() {
                    report.warn(&tag_at, "tagOverrides.name may not be empty");
                }
                match (tag.operation, &tag.value) {
                    (TagOperation::Upsert, None) => {
                        report.error(&tag_at, "value must be set when operation is UPSERT")
                    }
                    (TagOperation::Upsert, Some(v)) if v.is_empty() => {
                        report.error(&tag_at, "value must be set when operation is UPSERT")
                    }
                    (TagOperation::Remove, Some(_)) => {
                        report.error(&tag_at, "value must not be set when operation is REMOVE")
                    }
                    // Istio hands the expression to the proxies unchecked, which
                    // then report `unknown`; refused here, where it is written.
                    (TagOperation::Upsert, Some(v)) => {
                        if let Err(e) = cel::Program::compile(v) {
                            report.error(
                                &tag_at.field("value"),
                                format!("must be a valid CEL expression: {e}"),
                            );
                        }
                    }
                    _ => {}
                }
                if !name.is_empty() && !is_label_name(name) {
                    report.error(
                        &tag_at,
                        format!("{name:?} is not a metric label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
                    );
                }
            }
        }
    }
    if t.tracing.len() > 1 {
        report.warn(
            &at.field("tracing"),
            "multiple tracing is not currently supported",
        );
    }
    for (i, tracing) in t.tracing.iter().enumerate() {
        let here = at.field("tracing").index(i);
        if tracing.providers.len() > 1 {
            report.warn(
                &here.field("providers"),
                "multiple providers is not currently supported",
            );
        }
        providers(&tracing.providers, &here.field("providers"), report);
        if tracing
            .random_sampling_percentage
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            report.error(
                &here.field("randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
        for (name, tag) in &tracing.custom_tags {
            let tag_at = here.field("customTags").field(name);
            if name.is_empty() {
                report.error(&tag_at, "tag name may not be empty");
            }
            let kinds = [
                tag.literal.is_some(),
                tag.environment.is_some(),
                tag.header.is_some(),
                tag.formatter.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() > 1 {
                report.error(
                    &tag_at,
                    "only one of literal, environment, header or formatter may be set",
                );
            }
            let empty = [
                (
                    "literal",
                    tag.literal.as_ref().map(|l| l.value.as_str()),
                    "value",
                ),
                (
                    "environment",
                    tag.environment.as_ref().map(|e| e.name.as_str()),
                    "name",
                ),
                (
                    "header",
                    tag.header.as_ref().map(|h| h.name.as_str()),
                    "name",
                ),
                (
                    "formatter",
                    tag.formatter.as_ref().map(|f| f.value.as_str()),
                    "value",
                ),
            ];
            for (kind, value, field) in empty {
                if value == Some("") {
                    report.error(
                        &tag_at.field(kind).field(field),
                        format!("{MIN_LENGTH}: {kind} tag {field} may not be empty"),
                    );
                }
            }
        }
    }
    for (i, logging) in t.access_logging.iter().enumerate() {
        let here = at.field("accessLogging").index(i);
        providers(&logging.providers, &here.field("providers"), report);
        if let Some(filter) = &logging.filter {
            let at = here.field("filter").field("expression");
            if filter.expression.trim().is_empty() {
                report.error(&at, "must be a valid CEL expression: it is empty");
            } else if let Err(e) = cel::Program::compile(&filter.expression) {
                report.error(&at, format!("must be a valid CEL expression: {e}"));
            }
        }
    }
}

/// Prometheus's label names, which a tag becomes.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn providers(providers: &[ProviderRef], at: &FieldPath, report: &mut Report) {
    for (i, provider) in providers.iter().enumerate() {
        if provider.name.is_empty() {
            report.error(
                &at.index(i).field("name"),
                format!("{MIN_LENGTH}: providers.name may not be empty"),
            );
        }
    }
}

fn metric_selector(selector: &MetricSelector, at: &FieldPath, report: &mut Report) {
    if selector.metric.is_some() && selector.custom_metric.is_some() {
        report.error(at, "only one of metric or customMetric may be set");
    }
    if selector.custom_metric.as_deref() == Some("") {
        report.error(
            &at.field("customMetric"),
            format!("{MIN_LENGTH}: customMetric may not be empty"),
        );
    }
}
