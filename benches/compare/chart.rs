//! The chart: each FUSE contender's ratio to the kernel per workload, root and rootless
//! rows, drawn with plotters' bitmap backend. Text is drawn with a built-in 5x7 pixel font:
//! plotters' own text support needs a font, found through fontconfig (`ttf`, which needs
//! the fontconfig development files to build) or handed to it as bytes (`ab_glyph`), and
//! neither a font nor fontconfig is something every machine that runs this bench has.

use std::path::Path;

use crate::mounts::{Config, Contender, Ctx};
use crate::report::{ratio, summarize, target_for, AllResults};
use crate::workloads::Wl;

const GLYPHS: &[(char, &str)] = &[
    ('A', ".###.|#...#|#...#|#####|#...#|#...#|#...#"),
    ('B', "####.|#...#|#...#|####.|#...#|#...#|####."),
    ('C', ".###.|#...#|#....|#....|#....|#...#|.###."),
    ('D', "####.|#...#|#...#|#...#|#...#|#...#|####."),
    ('E', "#####|#....|#....|####.|#....|#....|#####"),
    ('F', "#####|#....|#....|####.|#....|#....|#...."),
    ('G', ".###.|#...#|#....|#.###|#...#|#...#|.####"),
    ('H', "#...#|#...#|#...#|#####|#...#|#...#|#...#"),
    ('I', ".###.|..#..|..#..|..#..|..#..|..#..|.###."),
    ('J', "..###|...#.|...#.|...#.|...#.|#..#.|.##.."),
    ('K', "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#"),
    ('L', "#....|#....|#....|#....|#....|#....|#####"),
    ('M', "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#"),
    ('N', "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#"),
    ('O', ".###.|#...#|#...#|#...#|#...#|#...#|.###."),
    ('P', "####.|#...#|#...#|####.|#....|#....|#...."),
    ('Q', ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#"),
    ('R', "####.|#...#|#...#|####.|#.#..|#..#.|#...#"),
    ('S', ".####|#....|#....|.###.|....#|....#|####."),
    ('T', "#####|..#..|..#..|..#..|..#..|..#..|..#.."),
    ('U', "#...#|#...#|#...#|#...#|#...#|#...#|.###."),
    ('V', "#...#|#...#|#...#|#...#|#...#|.#.#.|..#.."),
    ('W', "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#."),
    ('X', "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#"),
    ('Y', "#...#|#...#|.#.#.|..#..|..#..|..#..|..#.."),
    ('Z', "#####|....#|...#.|..#..|.#...|#....|#####"),
    ('0', ".###.|#...#|#..##|#.#.#|##..#|#...#|.###."),
    ('1', "..#..|.##..|..#..|..#..|..#..|..#..|.###."),
    ('2', ".###.|#...#|....#|...#.|..#..|.#...|#####"),
    ('3', "#####|...#.|..#..|...#.|....#|#...#|.###."),
    ('4', "...#.|..##.|.#.#.|#..#.|#####|...#.|...#."),
    ('5', "#####|#....|####.|....#|....#|#...#|.###."),
    ('6', "..##.|.#...|#....|####.|#...#|#...#|.###."),
    ('7', "#####|....#|...#.|..#..|.#...|.#...|.#..."),
    ('8', ".###.|#...#|#...#|.###.|#...#|#...#|.###."),
    ('9', ".###.|#...#|#...#|.####|....#|...#.|.##.."),
    ('.', ".....|.....|.....|.....|.....|.##..|.##.."),
    (',', ".....|.....|.....|.....|.##..|..#..|.#..."),
    ('-', ".....|.....|.....|#####|.....|.....|....."),
    ('_', ".....|.....|.....|.....|.....|.....|#####"),
    (':', ".....|.##..|.##..|.....|.##..|.##..|....."),
    (';', ".....|.##..|.##..|.....|.##..|..#..|.#..."),
    ('/', ".....|....#|...#.|..#..|.#...|#....|....."),
    ('(', "...#.|..#..|.#...|.#...|.#...|..#..|...#."),
    (')', ".#...|..#..|...#.|...#.|...#.|..#..|.#..."),
    ('%', "##...|##..#|...#.|..#..|.#...|#..##|...##"),
    ('+', ".....|..#..|..#..|#####|..#..|..#..|....."),
    ('=', ".....|.....|#####|.....|#####|.....|....."),
    ('<', "...#.|..#..|.#...|#....|.#...|..#..|...#."),
    ('>', ".#...|..#..|...#.|....#|...#.|..#..|.#..."),
    ('*', ".....|..#..|#.#.#|.###.|#.#.#|..#..|....."),
    (' ', ".....|.....|.....|.....|.....|.....|....."),
];

/// One row of the chart: workload, its target (ratio to kernel), each contender's ratio.
type ChartRow = (String, Option<f64>, Vec<(Contender, Option<f64>)>);

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 6 * scale - scale
}

mod draw {
    use super::{text_width, ChartRow, GLYPHS};
    use crate::mounts::Contender;
    use plotters::prelude::*;
    use std::path::Path;

    type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
    type Res = Result<(), Box<dyn std::error::Error>>;

    fn text(a: &Area, x: i32, y: i32, s: &str, scale: i32, color: &RGBColor) -> Res {
        let mut cx = x;
        for ch in s.chars() {
            let up = ch.to_ascii_uppercase();
            let g = GLYPHS
                .iter()
                .find(|(c, _)| *c == up)
                .map_or("#####|#...#|#...#|#...#|#...#|#...#|#####", |(_, g)| *g);
            for (row, line) in g.split('|').enumerate() {
                for (col, b) in line.bytes().enumerate() {
                    if b == b'#' {
                        let x0 = cx + col as i32 * scale;
                        let y0 = y + row as i32 * scale;
                        // The far corner is exclusive.
                        a.draw(&Rectangle::new(
                            [(x0, y0), (x0 + scale, y0 + scale)],
                            color.filled(),
                        ))?;
                    }
                }
            }
            cx += 6 * scale;
        }
        Ok(())
    }

    /// Horizontal bars of each contender's ratio to the kernel, one row per workload, on a
    /// log scale; the kernel is the line at 1x, issue 5's target a red tick.
    pub fn render(path: &Path, rows: &[ChartRow], title: &str) -> Res {
        let colors = |c: Contender| match c {
            Contender::Kernel => RGBColor(90, 90, 90),
            Contender::FuseOverlayfs => RGBColor(230, 126, 34),
            Contender::FuseOverlayfs2 => RGBColor(142, 68, 173),
            Contender::Stratafs => RGBColor(41, 128, 185),
        };
        let nbars = rows.first().map_or(1, |r| r.2.len()).max(1) as i32;
        let bar_h = 16;
        let row_h = nbars * (bar_h + 4) + 14;
        let (left, right, top, bottom) = (190, 110, 90, 70);
        let width = 1200;
        let height = top + rows.len() as i32 * row_h + bottom;
        let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let black = RGBColor(20, 20, 20);
        let grey = RGBColor(225, 225, 225);
        let red = RGBColor(200, 30, 30);
        text(&root, 20, 14, title, 2, &black)?;

        let mut vmax: f64 = 2.0;
        let mut vmin: f64 = 0.5;
        for r in rows {
            for (_, v) in &r.2 {
                if let Some(v) = v {
                    vmax = vmax.max(*v * 1.15);
                    vmin = vmin.min(*v / 1.15);
                }
            }
        }
        let ticks: Vec<f64> = (-3..4)
            .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
            .collect();
        let lo = ticks
            .iter()
            .copied()
            .filter(|t| *t <= vmin)
            .fold(0.1, f64::max);
        let hi = ticks
            .iter()
            .copied()
            .filter(|t| *t >= vmax)
            .fold(f64::INFINITY, f64::min)
            .min(1000.0);
        let x0 = left;
        let x1 = width - right;
        let y0 = top;
        let y1 = top + rows.len() as i32 * row_h;
        let xof = |v: f64| {
            let v = v.clamp(lo, hi);
            x0 + ((v.ln() - lo.ln()) / (hi.ln() - lo.ln()) * f64::from(x1 - x0)) as i32
        };
        // Legend.
        let mut lx = 20;
        let ly = 46;
        if let Some(r) = rows.first() {
            for (c, _) in &r.2 {
                root.draw(&Rectangle::new(
                    [(lx, ly), (lx + 14, ly + 14)],
                    colors(*c).filled(),
                ))?;
                text(&root, lx + 20, ly, c.name(), 2, &black)?;
                lx += 20 + text_width(c.name(), 2) + 30;
            }
        }
        root.draw(&Rectangle::new(
            [(lx, ly), (lx + 2, ly + 14)],
            black.filled(),
        ))?;
        text(&root, lx + 10, ly, "kernel = 1x", 2, &black)?;
        lx += 10 + text_width("kernel = 1x", 2) + 30;
        root.draw(&Rectangle::new(
            [(lx, ly - 2), (lx + 3, ly + 16)],
            red.filled(),
        ))?;
        text(&root, lx + 10, ly, "target", 2, &black)?;

        // Grid and ticks.
        for t in ticks.iter().copied().filter(|t| *t >= lo && *t <= hi) {
            let x = xof(t);
            root.draw(&PathElement::new(vec![(x, y0), (x, y1)], grey))?;
            let label = if t < 1.0 {
                format!("{t}x")
            } else {
                format!("{t:.0}x")
            };
            text(
                &root,
                x - text_width(&label, 2) / 2,
                y1 + 10,
                &label,
                2,
                &black,
            )?;
        }
        text(
            &root,
            x0,
            y1 + 40,
            "wall time / kernel wall time, median, log scale; lower is better",
            2,
            &black,
        )?;
        // Rows.
        for (i, (name, target, bars)) in rows.iter().enumerate() {
            let ry = y0 + i as i32 * row_h + 7;
            text(&root, 14, ry + (row_h - 14 - 14) / 2, name, 2, &black)?;
            if let Some(t) = target {
                let x = xof(*t);
                root.draw(&Rectangle::new(
                    [(x - 1, ry - 3), (x + 1, ry + nbars * (bar_h + 4))],
                    red.filled(),
                ))?;
            }
            for (j, (c, v)) in bars.iter().enumerate() {
                let by = ry + j as i32 * (bar_h + 4);
                match v {
                    Some(v) => {
                        let xe = xof(*v).max(x0 + 1);
                        root.draw(&Rectangle::new(
                            [(x0, by), (xe, by + bar_h)],
                            colors(*c).filled(),
                        ))?;
                        let label = format!("{v:.2}x");
                        root.draw(&Rectangle::new(
                            [(xe + 3, by), (xe + 9 + text_width(&label, 2), by + bar_h)],
                            WHITE.filled(),
                        ))?;
                        text(&root, xe + 6, by + 1, &label, 2, &black)?;
                    }
                    None => text(&root, x0 + 6, by + 1, "failed / not run", 2, &red)?,
                }
            }
        }
        let x1k = xof(1.0);
        root.draw(&Rectangle::new([(x1k - 1, y0), (x1k, y1)], black.filled()))?;
        root.draw(&PathElement::new(vec![(x0, y0), (x0, y1), (x1, y1)], black))?;
        root.present()?;
        Ok(())
    }
}

pub fn render_chart(
    path: &Path,
    ctx: &Ctx,
    all: &AllResults,
    contenders: &[Contender],
    wls: &[Wl],
) {
    let shown: Vec<Contender> = contenders
        .iter()
        .copied()
        .filter(|c| *c != Contender::Kernel)
        .collect();
    let mut rows: Vec<ChartRow> = Vec::new();
    for (&cfg, results) in all {
        for &w in wls {
            if !results.keys().any(|(rw, _)| *rw == w) {
                continue;
            }
            let kw = summarize(results, w, Contender::Kernel).and_then(|r| r.wall);
            let bars = shown
                .iter()
                .map(|&c| (c, ratio(summarize(results, w, c).and_then(|r| r.wall), kw)))
                .collect();
            let label = match cfg {
                Config::Root => w.name().to_string(),
                Config::Rootless => format!("{} rl", w.name()),
            };
            rows.push((label, target_for(cfg, w), bars));
        }
    }
    let rounds = all
        .values()
        .flat_map(|r| r.values())
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    let title = format!(
        "union filesystems vs kernel overlayfs, root and rootless (rl) ({} data set, {rounds} round(s))",
        ctx.size.name
    );
    if let Err(e) = draw::render(path, &rows, &title) {
        eprintln!("compare: chart {}: {e}", path.display());
    }
}
