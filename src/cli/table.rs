//! Plain-text tables for the CLI's listings. Cells are rendered to `String`s
//! first and each column is as wide as its widest cell, so rows line up
//! whatever the values (a `serde_json::Value` ignores `{:<8}`: its Display
//! has no width).

/// Where a cell sits in its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// Space between two columns.
const GAP: &str = "  ";
/// The last column keeps at least this many characters however narrow the line.
const MIN_LAST: usize = 20;

/// The header line and one line per row. The last column is never padded;
/// with `width`, its cells are cut (ending in `…`) so lines fit in it.
pub fn render(columns: &[(&str, Align)], rows: &[Vec<String>], width: Option<usize>) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows.iter().map(|row| row.iter().map(|cell| shown(cell)).collect()).collect();
    let n = columns.len();
    let mut widths: Vec<usize> = columns.iter().map(|(title, _)| title.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let before_last: usize = widths.iter().take(n.saturating_sub(1)).map(|w| w + GAP.len()).sum();
    let last_width = width.map(|w| w.saturating_sub(before_last).max(MIN_LAST));
    let line = |cells: &mut dyn Iterator<Item = (usize, &str)>| {
        let mut out = String::new();
        for (i, cell) in cells {
            let (w, align) = (widths[i], columns[i].1);
            if i + 1 == n {
                out.push_str(
                    &last_width.map_or_else(|| cell.to_owned(), |lw| crate::inspect_cli::records::fit(cell, lw)),
                );
                break;
            }
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            match align {
                Align::Left => out.extend([cell, &pad, GAP]),
                Align::Right => out.extend([&pad, cell, GAP]),
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(&mut columns.iter().map(|(title, _)| *title).enumerate())];
    out.extend(rows.iter().map(|row| line(&mut row.iter().map(String::as_str).take(n).enumerate())));
    out
}

/// `key: value` lines with the values lined up, for one object (a webhook,
/// a tunnel).
pub fn fields(fields: &[(&str, String)]) -> Vec<String> {
    let width = fields.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0) + 1;
    fields.iter().map(|(k, v)| format!("{:<width$} {}", format!("{k}:"), shown(v))).collect()
}

/// A cell as a terminal can show it without being rewritten by it: names
/// stored before the server refused control and text-direction characters
/// (an organization's from `keys create`, found by an adversarial probe) show
/// them as U+FFFD.
fn shown(cell: &str) -> String {
    cell.chars().map(|c| if hookway::rewrites_terminal(c) { '\u{fffd}' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["a".to_owned(), "7".to_owned(), "last one".to_owned()],
            vec!["longer".to_owned(), "1234".to_owned(), "x".to_owned()],
        ];
        let lines = render(&[("ID", Align::Left), ("N", Align::Right), ("TEXT", Align::Left)], &rows, None);
        assert_eq!(lines, ["ID         N  TEXT", "a          7  last one", "longer  1234  x"]);
    }

    #[test]
    fn field_values_line_up() {
        let lines = fields(&[("id", "tun_1".to_owned()), ("auth token", "hwt_x".to_owned())]);
        assert_eq!(lines, ["id:         tun_1", "auth token: hwt_x"]);
    }

    #[test]
    fn cells_cannot_rewrite_the_terminal() {
        let rows = vec![vec!["evil\u{1b}[2J\nx".to_owned(), "a\u{202e}b".to_owned()]];
        let lines = render(&[("ORG", Align::Left), ("NAME", Align::Left)], &rows, None);
        assert_eq!(lines[1], "evil\u{fffd}[2J\u{fffd}x  a\u{fffd}b");
        assert_eq!(fields(&[("name", "a\tb".to_owned())]), ["name: a\u{fffd}b"]);
    }

    #[test]
    fn the_last_column_is_cut_to_the_width() {
        let rows = vec![vec!["id".to_owned(), "x".repeat(50)]];
        let lines = render(&[("ID", Align::Left), ("DETAIL", Align::Left)], &rows, Some(30));
        assert_eq!(lines[1].chars().count(), 30, "{lines:?}");
        assert!(lines[1].ends_with('…'));
        let narrow = render(&[("ID", Align::Left), ("DETAIL", Align::Left)], &rows, Some(5));
        assert_eq!(narrow[1].chars().count(), 4 + MIN_LAST, "the last column keeps {MIN_LAST} characters");
    }
}
