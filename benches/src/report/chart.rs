//! The SVG chart docs/benchmarks.md embeds: requests/s and proxy CPU per request, grouped by scenario
//! and body, one bar per target (medians over rounds).

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::{Case, Summary};

/// Colours in target order (direct, the peers, upkeep with and without pooling, then extras).
const PALETTE: [RGBColor; 8] = [
    RGBColor(150, 150, 150),
    RGBColor(190, 120, 90),
    RGBColor(230, 150, 50),
    RGBColor(90, 130, 190),
    RGBColor(40, 160, 90),
    RGBColor(140, 200, 150),
    RGBColor(160, 110, 190),
    RGBColor(90, 90, 90),
];

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn panel(
    area: &Panel<'_>,
    title: &str,
    summary: &[(Case, Vec<(String, Summary)>)],
    targets: &[String],
    value: impl Fn(&Summary) -> Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    // One segment per bar plus one empty segment between cases.
    let per_case = targets.len() + 1;
    let total = (summary.len() * per_case) as u32;
    let max = summary
        .iter()
        .flat_map(|(_, rows)| rows.iter().filter_map(|(_, s)| value(s)))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let labels: Vec<String> = summary
        .iter()
        .map(|((scenario, body), rows)| {
            let clients = rows.first().map_or(0, |(_, s)| s.conns);
            format!("{scenario} / {body} (c{clients})")
        })
        .collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d((0..total).into_segmented(), 0.0..max * 1.12)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(total as usize)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i)
                if (*i as usize) % per_case == targets.len() / 2 =>
            {
                labels
                    .get(*i as usize / per_case)
                    .cloned()
                    .unwrap_or_default()
            }
            _ => String::new(),
        })
        .y_label_formatter(&|v| short(*v))
        .draw()?;
    for (t, target) in targets.iter().enumerate() {
        let color = PALETTE[t % PALETTE.len()];
        let bars: Vec<(u32, f64)> = summary
            .iter()
            .enumerate()
            .filter_map(|(c, (_, rows))| {
                let s = rows.iter().find(|(name, _)| name == target)?;
                Some(((c * per_case + t) as u32, value(&s.1)?))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x, v)| {
                Rectangle::new(
                    [
                        (SegmentValue::Exact(x), 0.0),
                        (SegmentValue::Exact(x + 1), v),
                    ],
                    color.filled(),
                )
            }))?
            .label(target.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(bars.iter().map(|&(x, v)| {
            EmptyElement::at((SegmentValue::CenterOf(x), v))
                + Text::new(
                    short(v),
                    (-10, -12),
                    ("sans-serif", 10).into_font().color(&BLACK),
                )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// Renders the two-panel chart as an SVG document.
pub fn svg(summary: &[(Case, Vec<(String, Summary)>)], subtitle: &str) -> Result<String, String> {
    let mut targets: Vec<String> = Vec::new();
    for (_, rows) in summary {
        for (t, _) in rows {
            if !targets.contains(t) {
                targets.push(t.clone());
            }
        }
    }
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (1200, 820)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error>> {
            root.fill(&WHITE)?;
            let root = root.titled(subtitle, ("sans-serif", 14))?;
            let (top, bottom) = root.split_vertically(400);
            panel(
                &top,
                "requests/s (median over rounds; higher is better)",
                summary,
                &targets,
                |s| Some(s.rps),
            )?;
            panel(
                &bottom,
                "proxy CPU µs per request (utime+stime; lower is better)",
                summary,
                &targets,
                |s| s.cpu_us,
            )?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_bar_per_target_and_case() {
        let s = |rps: f64, cpu: Option<f64>| Summary {
            rps,
            cpu_us: cpu,
            conns: 64,
            ..Summary::default()
        };
        let summary = vec![
            (
                ("keepalive".to_string(), "small".to_string()),
                vec![
                    ("direct".to_string(), s(50_000.0, None)),
                    ("upkeep".to_string(), s(40_000.0, Some(12.5))),
                ],
            ),
            (
                ("close".to_string(), "64k".to_string()),
                vec![("upkeep".to_string(), s(7_000.0, Some(90.0)))],
            ),
        ];
        let svg = svg(&summary, "test run").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for label in [
            "keepalive / small (c64)",
            "close / 64k (c64)",
            "upkeep",
            "40k",
            "12.5",
            "90.0",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
    }
}
