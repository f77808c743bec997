//! `comfyfleet report gpus|environments|optimizations|drift [--where SELECTOR]`: the
//! controller computes the report over the machines the selector picks; this prints it
//! as a table, JSON (the report itself) or CSV (the same columns as the table).

use comfyfleet_config::fleet_report::{FleetReport, ReportKind};
use comfyfleet_config::spec::Selector;
use comfyfleet_proto::v1 as pb;

use super::{status_error, to_json};
use crate::client::Fleet;
use crate::format;
use crate::{OutputFormat, ReportArg};

/// A selector's mistake, shown before anything is sent, with a caret under it.
pub fn check_selector(text: &str) -> anyhow::Result<()> {
    if text.trim().is_empty() {
        return Ok(());
    }
    Selector::parse_query(text).map(|_| ()).map_err(|error| {
        let column = text.get(..error.offset).map_or(0, |before| before.chars().count());
        anyhow::anyhow!("--where: {}\n  {text}\n  {}^", error.message, " ".repeat(column))
    })
}

pub async fn show(
    client: &mut Fleet,
    report: ReportArg,
    selector: String,
    output: OutputFormat,
) -> anyhow::Result<String> {
    check_selector(&selector)?;
    let kind = match report {
        ReportArg::Gpus => ReportKind::Gpus,
        ReportArg::Environments => ReportKind::Environments,
        ReportArg::Optimizations => ReportKind::Optimizations,
        ReportArg::Drift => ReportKind::Drift,
    };
    let answer = client
        .get_fleet_report(pb::FleetReportRequest { report: kind.as_str().to_owned(), selector })
        .await
        .map_err(status_error)?
        .into_inner();
    let report: FleetReport = serde_json::from_str(&answer.report_json)
        .map_err(|error| anyhow::anyhow!("the controller sent an unreadable {kind} report: {error}"))?;
    render(&report, output)
}

pub fn render(report: &FleetReport, output: OutputFormat) -> anyhow::Result<String> {
    let (header, rows) = report.table();
    match output {
        OutputFormat::Json => to_json(report),
        OutputFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            format::csv_record(&mut writer, &header)?;
            for row in &rows {
                format::csv_record(&mut writer, row)?;
            }
            Ok(String::from_utf8(writer.into_inner()?)?)
        }
        OutputFormat::Table => {
            let header: Vec<String> =
                header.iter().map(|name| name.replace('_', " ").to_uppercase()).collect();
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            let mut text = if rows.is_empty() { String::new() } else { format::table(&header, &rows) };
            let what = match report {
                FleetReport::Drift { rows, .. } => format!("{} drifted", rows.len()),
                _ => format!("{} rows", rows.len()),
            };
            text.push_str(&format!("\n{} machines, {what}\n", report.machines()));
            Ok(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_selector_is_shown_with_a_caret_under_the_mistake() {
        let error = check_selector("gpu.compute >= 8.9 && opt.sage == works").unwrap_err().to_string();
        assert!(error.contains("write an outcome: verified, failed"), "{error}");
        assert!(error.ends_with(&format!("\n  {}^", " ".repeat(34))), "{error}");
        assert!(check_selector("").is_ok());
    }
}
