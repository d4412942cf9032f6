//! The report of a run: printed, written to the bench's folder, and (for a whole run) to
//! docs/bench/latest.md, which docs/performance.md quotes.

use std::path::Path;

/// Prints the table and its notes, and writes them to `root`/latest.md.
pub(crate) fn report(root: &Path, runs: &str, table: &str, notes: &[String]) -> Result<(), String> {
    let report = format!(
        "# lambda-bench\n\nmachine: {} cores; {runs}\n\n{table}\n{}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        notes.join("\n")
    );
    print!("{report}");
    std::fs::write(root.join("latest.md"), &report).map_err(|e| format!("report: {e}"))?;
    eprintln!("written to {}", root.join("latest.md").display());
    // A whole run is also the figures docs/performance.md quotes: written, not copied.
    if runs.starts_with("synchronous=") {
        let docs = root.join("../../docs/bench/latest.md");
        let dated = format!(
            "<!-- Written by `make bench` ({}); do not edit by hand. -->\n{report}",
            today_utc()
        );
        if std::fs::write(&docs, dated).is_ok() {
            eprintln!("and to {}", docs.display());
        }
    }
    Ok(())
}

/// Today, as the calendar date in UTC (YYYY-MM-DD), for the report's header.
fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    date_of(i64::try_from(secs / 86_400).unwrap_or(0))
}

/// Days since 1970-01-01 as a proleptic Gregorian date, counted in 400-year eras.
fn date_of(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_since_the_epoch_are_calendar_dates() {
        assert_eq!(super::date_of(0), "1970-01-01");
        assert_eq!(super::date_of(59), "1970-03-01");
        assert_eq!(super::date_of(11_016), "2000-02-29");
        assert_eq!(super::date_of(20_787), "2026-11-30");
        assert_eq!(super::date_of(-1), "1969-12-31");
    }
}
