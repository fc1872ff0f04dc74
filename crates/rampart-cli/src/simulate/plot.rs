//! The plot: one column per policy; rows: calls a second (offered, upstream attempts),
//! success rate, breaker state.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::Run;

/// DejaVu Sans (Bitstream Vera license, see assets/DejaVuSans.LICENSE): text rendering
/// needs no system fonts.
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

const FAMILY: &str = "sans-serif";
const OFFERED: RGBColor = RGBColor(31, 119, 180);
const ATTEMPTS: RGBColor = RGBColor(214, 39, 40);
const SUCCESS: RGBColor = RGBColor(44, 160, 44);
const BREAKER: RGBColor = RGBColor(148, 103, 189);

/// Writes the plot as SVG and PNG.
pub(crate) fn write(runs: &[Run], title: &str, svg: &Path, png: &Path) -> Result<(), String> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| "the embedded font does not load".to_owned())?;
    let cols = u32::try_from(runs.len().max(1)).unwrap_or(1);
    let size = (cols.saturating_mul(520).max(640), 860);
    {
        let root = SVGBackend::new(svg, size).into_drawing_area();
        draw(&root, runs, title).map_err(|e| format!("{}: {e}", svg.display()))?;
        root.present()
            .map_err(|e| format!("{}: {e}", svg.display()))?;
    }
    let root = BitMapBackend::new(png, size).into_drawing_area();
    draw(&root, runs, title).map_err(|e| format!("{}: {e}", png.display()))?;
    root.present()
        .map_err(|e| format!("{}: {e}", png.display()))?;
    Ok(())
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

type Panel<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel: its caption, axes over `0..secs` virtual seconds and `y`, and the mesh with
/// `y_label` formatting the y axis (`y_labels`: how many y labels, if not plotters' default).
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: String,
    secs: f64,
    y: std::ops::Range<f64>,
    y_label_area: u32,
    y_labels: Option<usize>,
    y_label: &dyn Fn(&f64) -> String,
) -> Result<Panel<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 17))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(0f64..secs, y)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("virtual seconds")
        .label_style((FAMILY, 12))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(y_label)
        .light_line_style(WHITE);
    if let Some(n) = y_labels {
        mesh.y_labels(n);
    }
    mesh.draw()?;
    Ok(chart)
}

fn whole(v: &f64) -> String {
    format!("{v:.0}")
}

fn breaker_state(v: &f64) -> String {
    match v.round() as i64 {
        0 => "closed",
        1 => "half-open",
        2 => "open",
        _ => "",
    }
    .to_owned()
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[Run],
    title: &str,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 24))?;
    let n = runs.len().max(1);
    let areas = root.split_evenly((3, n));
    let secs = runs
        .iter()
        .map(|r| r.seconds.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_calls = runs
        .iter()
        .flat_map(|r| r.seconds.iter())
        .map(|s| s.offered.max(s.attempts))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    for (c, run) in runs.iter().enumerate() {
        // Calls a second.
        if let Some(area) = areas.get(c) {
            let caption = format!("{}: calls per second", run.name);
            let mut chart = panel(area, caption, secs, 0f64..max_calls, 48, None, &whole)?;
            let offered = run
                .seconds
                .iter()
                .enumerate()
                .map(|(i, s)| (i as f64 + 0.5, s.offered as f64));
            chart
                .draw_series(LineSeries::new(offered, OFFERED.stroke_width(2)))?
                .label("offered")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], OFFERED.stroke_width(2))
                });
            let attempts = run
                .seconds
                .iter()
                .enumerate()
                .map(|(i, s)| (i as f64 + 0.5, s.attempts as f64));
            chart
                .draw_series(LineSeries::new(attempts, ATTEMPTS.stroke_width(2)))?
                .label("upstream attempts")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], ATTEMPTS.stroke_width(2))
                });
            chart
                .configure_series_labels()
                .label_font((FAMILY, 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }
        // Success rate.
        if let Some(area) = areas.get(n + c) {
            let caption = format!("{}: success % of calls started", run.name);
            let mut chart = panel(area, caption, secs, 0f64..105f64, 48, None, &whole)?;
            let ok = run
                .seconds
                .iter()
                .enumerate()
                .filter(|(_, s)| s.done > 0)
                .map(|(i, s)| (i as f64 + 0.5, s.ok as f64 * 100.0 / s.done as f64));
            chart.draw_series(LineSeries::new(ok, SUCCESS.stroke_width(2)))?;
        }
        // Breaker state.
        if let Some(area) = areas.get(2 * n + c) {
            let caption = if run.breaker_off {
                format!("{}: breaker state (no breaker)", run.name)
            } else {
                format!("{}: breaker state", run.name)
            };
            let mut chart = panel(
                area,
                caption,
                secs,
                -0.2f64..2.3f64,
                78,
                Some(3),
                &breaker_state,
            )?;
            let steps = run.seconds.iter().enumerate().flat_map(|(i, s)| {
                let y = f64::from(s.breaker);
                [(i as f64, y), (i as f64 + 1.0, y)]
            });
            chart.draw_series(LineSeries::new(steps, BREAKER.stroke_width(2)))?;
        }
    }
    Ok(())
}
