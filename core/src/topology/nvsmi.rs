//! Reads the text `nvidia-smi topo -m` prints, as it prints it in every driver generation:
//! tab- or space-separated, NIC rows and columns (`NIC#` with a NIC legend, or HCA names such
//! as `mlx5_0`), CPU/NUMA affinity columns, `GPU NUMA ID`, `NV1`..`NV18`, the old `SOC` for
//! `SYS`, a legend, headers whose tabs were lost (`GPU0GPU1...`), and rows of devices that the
//! header forgot (a bonded NIC). Never panics: malformed input is an error naming the line.

use super::{Gpu, Nic, PathClass, TopoDescription};
use crate::{Error, Result};
use std::collections::HashMap;

struct Row {
    label: String,
    cells: Vec<String>,
    line: usize,
}

fn is_device_label(t: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    t.strip_prefix("GPU").is_some_and(digits)
        || t.strip_prefix("NIC").is_some_and(digits)
        || t.starts_with("mlx")
        || t.starts_with("ib")
        || t.starts_with("eth")
        || t.starts_with("efa")
        || t.starts_with("bnxt")
        || t.starts_with("hfi")
}

/// Splits a header into device names, undoing lost tabs (`GPU0GPU1mlx5_0`) with the row
/// labels as the dictionary. Stops at the affinity columns.
fn header_devices(header: &str, labels: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut sorted: Vec<&String> = labels.iter().collect();
    sorted.sort_by_key(|l| std::cmp::Reverse(l.len()));
    for tok in header.split_whitespace() {
        let mut rest = tok;
        while !rest.is_empty() {
            match sorted.iter().find(|l| rest.starts_with(l.as_str())) {
                Some(l) => {
                    out.push(l.to_string());
                    rest = &rest[l.len()..];
                }
                None => break,
            }
        }
        if !rest.is_empty() && !out.is_empty() {
            // Affinity headings ("CPU Affinity", ...) come after the devices.
            break;
        }
    }
    out
}

/// Parses `nvidia-smi topo -m` output into a description.
pub fn parse(text: &str) -> Result<TopoDescription> {
    let clean = strip_terminal_escapes(text);
    let text = clean.as_str();
    let err =
        |line: usize, m: String| Error::invalid(format!("nvidia-smi topo text, line {line}: {m}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut header: Option<(usize, &str)> = None;
    let mut legend: HashMap<String, String> = HashMap::new();
    let mut in_legend = false;
    for (i, raw) in lines.iter().enumerate() {
        let ln = i + 1;
        let l = raw.trim_end_matches('\r');
        let t = l.trim();
        if t.is_empty() {
            continue;
        }
        if t.starts_with("Legend") || t.starts_with("NIC Legend") {
            in_legend = true;
            continue;
        }
        if in_legend {
            // "  NIC0: mlx5_2"
            if let Some((k, v)) = t.split_once(':') {
                if k.trim().starts_with("NIC") && !v.trim().is_empty() {
                    legend.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            continue;
        }
        let first = t.split_whitespace().next().unwrap_or("");
        let starts_indented = l.starts_with(|c: char| c.is_whitespace());
        if header.is_none() && (starts_indented || !is_device_label(first)) && t.contains("GPU") {
            header = Some((ln, t));
            continue;
        }
        if is_device_label(first) && !starts_indented {
            if header.is_none() {
                return Err(err(
                    ln,
                    format!("device row '{first}' before any header line"),
                ));
            }
            let cells: Vec<String> = t.split_whitespace().skip(1).map(str::to_string).collect();
            if rows.iter().any(|r| r.label == first) {
                return Err(err(ln, format!("device '{first}' appears twice")));
            }
            rows.push(Row {
                label: first.to_string(),
                cells,
                line: ln,
            });
            continue;
        }
        if header.is_some() && !rows.is_empty() {
            // Anything else after the matrix (prompts, notes) ends it.
            in_legend = true;
        }
    }
    let (hline, htext) = header.ok_or_else(|| {
        err(
            0,
            "no header line with GPU columns found (is this `nvidia-smi topo -m` output?)".into(),
        )
    })?;
    if rows.is_empty() {
        return Err(err(hline, "no device rows under the header".into()));
    }
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let cols = header_devices(htext, &labels);
    if cols.is_empty() {
        return Err(err(hline, "header names no device that has a row".into()));
    }
    let ncol = cols.len();
    let has_cpu = htext.contains("CPU Affinity");
    let has_numa = htext.contains("NUMA Affinity");

    // Path class of row i to device j, when the row has that column.
    let col_index: HashMap<&str, usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut parsed: Vec<Vec<Option<PathClass>>> = Vec::new();
    for r in &rows {
        let mut v = Vec::with_capacity(ncol);
        for (j, c) in r.cells.iter().take(ncol).enumerate() {
            let p = PathClass::parse(c).ok_or_else(|| err(r.line, format!("'{c}' in column {} of {} is not a path class (X, NV#, PIX, PXB, PHB, NODE, SYS, SOC)", cols[j], r.label)))?;
            v.push(Some(p));
        }
        v.resize(ncol, None);
        parsed.push(v);
    }
    let n = rows.len();
    let cell = |i: usize, j: usize| -> Option<PathClass> {
        col_index
            .get(labels[j].as_str())
            .and_then(|&c| parsed[i][c])
    };
    let mut paths = vec![vec![PathClass::SYS; n]; n];
    for i in 0..n {
        for j in 0..n {
            paths[i][j] = match (cell(i, j), cell(j, i)) {
                _ if i == j => PathClass::X,
                (Some(a), Some(b)) if a != b => {
                    return Err(err(
                        rows[i].line,
                        format!(
                            "{} to {} is {a} but {} to {} is {b}",
                            labels[i], labels[j], labels[j], labels[i]
                        ),
                    ))
                }
                (Some(a), _) | (None, Some(a)) => a,
                (None, None) => {
                    return Err(err(
                        rows[i].line,
                        format!(
                            "no cell gives the path between {} and {}",
                            labels[i], labels[j]
                        ),
                    ));
                }
            };
            if i != j && paths[i][j] == PathClass::X {
                return Err(err(
                    rows[i].line,
                    format!("{} to {} is X off the diagonal", labels[i], labels[j]),
                ));
            }
        }
    }

    // Devices: GPUs by index, then NICs in row order; reorder the matrix to match.
    let mut gpu_rows: Vec<(u32, usize)> = Vec::new();
    let mut nic_rows: Vec<usize> = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        match l.strip_prefix("GPU").and_then(|d| d.parse::<u32>().ok()) {
            Some(idx) => gpu_rows.push((idx, i)),
            None => nic_rows.push(i),
        }
    }
    gpu_rows.sort();
    let order: Vec<usize> = gpu_rows
        .iter()
        .map(|g| g.1)
        .chain(nic_rows.iter().copied())
        .collect();
    let gpus = gpu_rows
        .iter()
        .map(|&(index, i)| {
            let extra: Vec<&String> = rows[i].cells.iter().skip(ncol).collect();
            let cpu_affinity = if has_cpu {
                extra.first().map(|s| s.to_string())
            } else {
                None
            };
            let numa_node = if has_numa {
                extra.get(usize::from(has_cpu)).and_then(|s| s.parse().ok())
            } else {
                None
            };
            Gpu {
                index,
                pci_bus_id: None,
                numa_node,
                link_gts: None,
                link_width: None,
                cpu_affinity,
            }
        })
        .collect();
    let nics = nic_rows
        .iter()
        .map(|&i| {
            let l = &labels[i];
            Nic {
                name: legend.get(l).cloned().unwrap_or_else(|| l.clone()),
                pci_bus_id: None,
                numa_node: None,
                speed_mbps: None,
            }
        })
        .collect();
    let paths = order
        .iter()
        .map(|&i| order.iter().map(|&j| paths[i][j]).collect())
        .collect();
    let d = TopoDescription {
        source: "nvidia-smi".into(),
        hostname: String::new(),
        sockets: 0,
        cores: 0,
        numa: vec![],
        gpus,
        nics,
        paths,
        gpu_name: None,
        cpu_name: None,
        p2p: None,
    };
    d.validate()?;
    Ok(d)
}

/// Removes terminal control sequences: `nvidia-smi topo -m` captured from a terminal (or
/// through `script`) underlines the header with `ESC[4m` ... `ESC[0m`. CSI sequences
/// (`ESC [` parameters, final byte `@`..`~`), OSC sequences (`ESC ]` ... BEL or `ESC \\`) and
/// two-byte escapes are dropped; other control characters except tab and newline too.
pub fn strip_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{1b}' => match it.next() {
                Some('[') => {
                    for d in it.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(d) = it.next() {
                        if d == '\u{7}' || (d == '\u{1b}' && it.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                // Character-set designations carry one more byte: ESC ( B.
                Some('(' | ')' | '*' | '+') => {
                    it.next();
                }
                _ => {}
            },
            '\u{9b}' => {
                // 8-bit CSI
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabs_spaces_soc_and_legend() {
        let t = "\tGPU0\tGPU1\tmlx5_0\tCPU Affinity\n\
                 GPU0\t X \tNV2\tPIX\t0-7\n\
                 GPU1\tNV2\t X \tSOC\t8-15\n\
                 mlx5_0\tPIX\tSOC\t X \n\nLegend:\n  X = Self\n";
        let d = parse(t).unwrap();
        assert_eq!(d.gpus.len(), 2);
        assert_eq!(d.nics[0].name, "mlx5_0");
        assert_eq!(d.paths[0][1], PathClass::NV(2));
        assert_eq!(d.paths[1][2], PathClass::SYS);
        assert_eq!(d.gpus[1].cpu_affinity.as_deref(), Some("8-15"));
    }

    #[test]
    fn errors_name_the_line() {
        assert!(parse("").unwrap_err().to_string().contains("no header"));
        let e = parse("\tGPU0\tGPU1\nGPU0\t X \tQPI\nGPU1\tQPI\t X\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("QPI"), "{e}");
        let e = parse("\tGPU0\tGPU1\nGPU0\t X \tNV1\nGPU1\tPIX\t X\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NV1") && e.contains("PIX"), "{e}");
        let e = parse("GPU0\t X\n").unwrap_err().to_string();
        assert!(e.contains("before any header"), "{e}");
    }

    /// The header as a terminal shows it: underlined, with the reset at its end.
    #[test]
    fn escape_sequences_of_a_captured_terminal_are_ignored() {
        let plain = include_str!("../../../tests/fixtures/nvsmi/12-rtx3090-2gpu-nvlink-nv4.txt");
        let mut lines: Vec<String> = plain.lines().map(str::to_string).collect();
        let h = lines
            .iter()
            .position(|l| l.contains("GPU0") && l.contains("GPU1"))
            .unwrap();
        lines[h] = format!("\u{1b}[4m{}\u{1b}[0m", lines[h]);
        lines[h + 1] = format!("\u{1b}]0;title\u{7}{}\u{1b}[1;32m", lines[h + 1]);
        let dirty = lines.join("\n");
        assert_eq!(parse(&dirty).unwrap(), parse(plain).unwrap());
    }

    #[test]
    fn stripper_keeps_text_tabs_and_newlines() {
        assert_eq!(
            strip_terminal_escapes("a\u{1b}[4mb\tc\u{1b}[0m\nd\u{1b}(B\u{9b}2Je"),
            "ab\tc\nde"
        );
        assert_eq!(strip_terminal_escapes("x\u{1b}]8;;http://a\u{1b}\\y"), "xy");
        assert_eq!(strip_terminal_escapes("\u{1b}"), "");
    }
}
