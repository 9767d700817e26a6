//! Aligned tables, and the clock that "5s ago" is measured against. On a terminal, and only
//! without `NO_COLOR` (https://no-color.org), headers are bold and statuses coloured.

use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use helios_core::Timestamp;

pub fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
}

pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        print!("{}", self.render(colour));
    }

    /// The table's lines, padded on the plain text so that colour does not skew the columns.
    pub fn render(&self, colour: bool) -> String {
        let mut out = String::new();
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for (r, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let last = c + 1 == row.len();
                let padding = if last { 0 } else { widths[c] - cell.chars().count() + 2 };
                let style = match (colour, r) {
                    (false, _) => None,
                    (true, 0) => Some(BOLD),
                    (true, _) => status_colour(cell),
                };
                match style {
                    Some(code) => line.push_str(&format!("\x1b[{code}m{cell}\x1b[0m")),
                    None => line.push_str(cell),
                }
                line.push_str(&" ".repeat(padding));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

const BOLD: &str = "1";

/// The colour of a cell that is a status word: green what runs, red what failed or is down,
/// yellow what waits.
fn status_colour(cell: &str) -> Option<&'static str> {
    match cell {
        "running" | "ready" | "complete" | "leader" => Some("32"),
        "failed" | "down" | "lost" => Some("31"),
        "pending" | "blocked" | "initializing" | "draining" => Some("33"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_line_up_on_the_text_and_colour_wraps_only_status_words() {
        let mut table = Table::new(&["ID", "STATUS", "NODE"]);
        table.row(vec!["a1".into(), "running".into(), "n1".into()]);
        table.row(vec!["b22222".into(), "failed".into(), "n2".into()]);
        assert_eq!(table.render(false), "ID      STATUS   NODE\na1      running  n1\nb22222  failed   n2\n");
        let coloured = table.render(true);
        assert!(coloured.starts_with("\x1b[1mID\x1b[0m      \x1b[1mSTATUS\x1b[0m   "), "{coloured:?}");
        assert!(coloured.contains("\na1      \x1b[32mrunning\x1b[0m  n1\n"), "{coloured:?}");
        assert!(coloured.contains("\x1b[31mfailed\x1b[0m   n2\n"), "{coloured:?}");
    }
}
