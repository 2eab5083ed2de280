//! `edge-agent train …` and `edge-agent eval …`: build model artifacts from CSV exports and
//! measure them, with the metrics of the public benchmarks (see MODELS.md).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use edge_models::alarm::AlarmOptions;
use edge_models::csv::{CsvOptions, Separator};
use edge_models::dataset::Dataset;
use edge_models::eval::{self, Confusion};
use edge_models::train::{train, TrainOptions};
use edge_models::{Model, ModelKind, Prediction};

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Train a model from a CSV export and write its artifact directory.
    Train {
        #[arg(value_enum)]
        kind: Kind,
        /// CSV file(s); several are concatenated (groups kept apart).
        #[arg(long, required = true, value_name = "FILE")]
        csv: Vec<PathBuf>,
        /// Artifact directory to write (manifest.json + weights.safetensors).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        table: TableArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Measure a model (or, for anomaly, the per-run train-then-score protocol) on CSV data.
    Eval {
        #[arg(value_enum)]
        kind: Kind,
        /// CSV file(s) to score; for anomaly each file is one labelled run.
        #[arg(long, required = true, value_name = "FILE")]
        csv: Vec<PathBuf>,
        /// Artifact to score with. Anomaly without --model: train a model per file on its
        /// first --train-rows rows (the SKAB protocol).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Rul: true remaining life of each group at its last row, one per line, in group order.
        #[arg(long, value_name = "FILE")]
        truth: Option<PathBuf>,
        /// Anomaly: rows at the start of each file that are normal and used for training.
        #[arg(long, default_value_t = 400)]
        train_rows: usize,
        #[command(flatten)]
        table: TableArgs,
        #[command(flatten)]
        train_opts: ModelArgs,
        #[command(flatten)]
        alarm: AlarmArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Anomaly,
    Quality,
    Rul,
}

impl From<Kind> for ModelKind {
    fn from(k: Kind) -> ModelKind {
        match k {
            Kind::Anomaly => ModelKind::Anomaly,
            Kind::Quality => ModelKind::Quality,
            Kind::Rul => ModelKind::Rul,
        }
    }
}

/// How to read the CSV.
#[derive(Args, Clone)]
pub struct TableArgs {
    /// Field separator: a character, "tab", or "space" (runs of whitespace); default: guessed.
    #[arg(long)]
    sep: Option<String>,
    /// The file has no header line (columns are c1, c2, … unless --names).
    #[arg(long)]
    no_header: bool,
    /// Column names for a file without header, comma-separated.
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Time column (dropped from the inputs).
    #[arg(long)]
    time: Option<String>,
    /// Input columns in order, comma-separated (default: all but time, target, group, --drop).
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Columns to leave out of the default inputs.
    #[arg(long, value_delimiter = ',')]
    drop: Vec<String>,
    /// Target column: anomaly label (0/1), lab value, or remaining life.
    #[arg(long, alias = "target")]
    label: Option<String>,
    /// Group (unit / run) column, for run-to-failure data.
    #[arg(long)]
    group: Option<String>,
    /// Only data rows START..END (0-based, after the header), e.g. a chronological split.
    #[arg(long, value_name = "START..END")]
    rows: Option<String>,
}

/// Model options (defaults suit most plants; see MODELS.md).
#[derive(Args, Clone)]
pub struct ModelArgs {
    #[arg(long, default_value = "model")]
    name: String,
    #[arg(long, default_value = "1")]
    version: String,
    /// anomaly: conv-ae (default) | pca; quality: ridge-mlp (default) | ridge; rul: tcn.
    #[arg(long)]
    architecture: Option<String>,
    /// Rows per window.
    #[arg(long)]
    window: Option<usize>,
    /// Quality: lags of each input in rows, comma-separated (e.g. 0,1,2,4).
    #[arg(long, value_delimiter = ',')]
    lags: Option<Vec<usize>>,
    /// Unit of the prediction ("%", "cycles", "h").
    #[arg(long)]
    unit: Option<String>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long)]
    epochs: Option<usize>,
    /// Rul: nets in the ensemble.
    #[arg(long)]
    members: Option<usize>,
    /// Rul: TCN channels.
    #[arg(long)]
    hidden: Option<usize>,
    /// Anomaly: target false-alarm rate on held-back normal rows.
    #[arg(long, default_value_t = 0.01)]
    far: f64,
    /// Anomaly: threshold = calibration quantile × this.
    #[arg(long, default_value_t = 1.0)]
    margin: f64,
    /// Share of the training data held back for early stopping and calibration.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Rul: cap of the target.
    #[arg(long, default_value_t = 125.0)]
    rul_cap: f32,
    /// Rul: columns that define the operating regime, comma-separated.
    #[arg(long, value_delimiter = ',')]
    regime_columns: Vec<String>,
    /// Rul: number of operating regimes.
    #[arg(long, default_value_t = 6)]
    regimes: usize,
    /// Nets: training windows per epoch (a random subset).
    #[arg(long, default_value_t = 8192)]
    per_epoch: usize,
}

/// Anomaly alarm filter used by eval.
#[derive(Args, Clone)]
pub struct AlarmArgs {
    /// Exponential smoothing factor of the score per row (1: none).
    #[arg(long, default_value_t = 0.2)]
    smoothing: f32,
    #[arg(long, default_value_t = 1.0)]
    on: f32,
    #[arg(long, default_value_t = 0.8)]
    off: f32,
    #[arg(long, default_value_t = 5)]
    min_on: usize,
    #[arg(long, default_value_t = 10)]
    min_off: usize,
}

impl TableArgs {
    fn options(&self) -> Result<CsvOptions> {
        let separator = match self.sep.as_deref() {
            None => Separator::Auto,
            Some("tab") => Separator::Char('\t'),
            Some("space") | Some("whitespace") => Separator::Whitespace,
            Some(s) if s.chars().count() == 1 => Separator::Char(s.chars().next().unwrap_or(',')),
            Some(s) => bail!("--sep {s:?}: give one character, \"tab\" or \"space\""),
        };
        let rows = match &self.rows {
            None => None,
            Some(r) => {
                let (a, b) = r.split_once("..").with_context(|| format!("--rows {r:?}: expected START..END"))?;
                let start = if a.is_empty() { 0 } else { a.parse().with_context(|| format!("--rows start {a:?}"))? };
                let end = if b.is_empty() { usize::MAX } else { b.parse().with_context(|| format!("--rows end {b:?}"))? };
                Some(start..end)
            }
        };
        Ok(CsvOptions {
            separator,
            header: !self.no_header,
            names: self.names.clone(),
            time: self.time.clone(),
            columns: self.columns.clone(),
            drop: self.drop.clone(),
            target: self.label.clone(),
            group: self.group.clone(),
            rows,
        })
    }
}

impl ModelArgs {
    fn options(&self) -> TrainOptions {
        TrainOptions {
            name: self.name.clone(),
            version: self.version.clone(),
            architecture: self.architecture.clone(),
            window: self.window,
            lags: self.lags.clone(),
            unit: self.unit.clone(),
            seed: self.seed,
            epochs: self.epochs,
            members: self.members,
            hidden: self.hidden,
            false_alarm_rate: self.far,
            threshold_margin: self.margin,
            calibration_fraction: self.holdout,
            rul_cap: self.rul_cap,
            regime_columns: self.regime_columns.clone(),
            regimes: self.regimes,
            max_examples_per_epoch: self.per_epoch,
        }
    }
}

fn read_all(files: &[PathBuf], opts: &CsvOptions) -> Result<Dataset> {
    let mut out: Option<Dataset> = None;
    for (i, f) in files.iter().enumerate() {
        let ds = edge_models::csv::read(f, opts)?;
        match &mut out {
            None => out = Some(ds),
            Some(acc) => {
                if acc.columns != ds.columns {
                    bail!("{}: columns {:?} differ from the first file's {:?}", f.display(), ds.columns, acc.columns);
                }
                acc.append(&ds, &format!("f{i}:"));
            }
        }
    }
    out.context("no CSV file given")
}

pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::Train { kind, csv, out, table, model } => {
            let data = read_all(&csv, &table.options()?)?;
            let started = Instant::now();
            let artifact = train(kind.into(), &data, &model.options())?;
            artifact.save(&out)?;
            let m = &artifact.manifest;
            println!(
                "{}: {} {} model, {} inputs, window {}, trained on {} rows in {:.1} s",
                out.display(),
                m.architecture,
                m.kind,
                m.inputs.len(),
                m.window,
                data.len(),
                started.elapsed().as_secs_f64()
            );
            for (k, v) in &m.metrics {
                println!("  {k} = {v:.4}");
            }
            Ok(())
        }
        ModelsCommand::Eval { kind, csv, model, truth, train_rows, table, train_opts, alarm } => {
            let opts = table.options()?;
            let alarm =
                AlarmOptions { smoothing: alarm.smoothing, on: alarm.on, off: alarm.off, min_on: alarm.min_on, min_off: alarm.min_off };
            match kind {
                Kind::Anomaly => eval_anomaly(&csv, &opts, model.as_deref(), train_rows, &train_opts.options(), alarm),
                Kind::Quality => eval_quality(&read_all(&csv, &opts)?, &load(model.as_deref())?),
                Kind::Rul => {
                    eval_rul(&read_all(&csv, &opts)?, &load(model.as_deref())?, truth.as_deref().context("rul eval needs --truth FILE")?)
                }
            }
        }
    }
}

fn load(dir: Option<&Path>) -> Result<Model> {
    let dir = dir.context("this eval needs --model DIR")?;
    Ok(Model::load(dir)?)
}

fn print_confusion(label: &str, c: &Confusion) {
    println!(
        "{label}: F1 {:.3}  FAR {:.2} %  MAR {:.2} %  (tp {} fp {} tn {} fn {})",
        c.f1(),
        100.0 * c.far(),
        100.0 * c.mar(),
        c.tp,
        c.fp,
        c.tn,
        c.fn_
    );
}

fn eval_anomaly(
    files: &[PathBuf],
    opts: &CsvOptions,
    model: Option<&Path>,
    train_rows: usize,
    train_opts: &TrainOptions,
    alarm: AlarmOptions,
) -> Result<()> {
    let fixed = model.map(Model::load).transpose()?;
    let (mut raw, mut filtered) = (Confusion::default(), Confusion::default());
    let started = Instant::now();
    for f in files {
        let data = edge_models::csv::read(f, opts)?;
        if data.target.is_none() {
            bail!("{}: anomaly eval needs a label column (--label)", f.display());
        }
        let r = match &fixed {
            Some(m) => eval::score_run(m, &data, alarm, 0, true)?,
            None => {
                // SKAB protocol: each run's first rows are normal; a model learns them and
                // scores the whole run (those rows included, as the published figures do).
                let normal = data.slice(0..train_rows.min(data.len()));
                let artifact = train(ModelKind::Anomaly, &normal, train_opts)
                    .with_context(|| format!("{}: training on the first {train_rows} rows", f.display()))?;
                let m = Model::from_artifact(f, artifact)?;
                eval::score_run(&m, &data, alarm, 0, true)?
            }
        };
        println!(
            "{}: raw F1 {:.3} FAR {:.1} % | alarm F1 {:.3} FAR {:.1} %",
            f.display(),
            r.raw.f1(),
            100.0 * r.raw.far(),
            r.alarm.f1(),
            100.0 * r.alarm.far()
        );
        raw.merge(&r.raw);
        filtered.merge(&r.alarm);
    }
    println!("{} runs in {:.1} s", files.len(), started.elapsed().as_secs_f64());
    print_confusion("score >= 1 per row", &raw);
    print_confusion("alarm (smoothing, hysteresis, min duration)", &filtered);
    Ok(())
}

fn eval_quality(data: &Dataset, model: &Model) -> Result<()> {
    let m = model.manifest();
    let target = data.target.as_ref().context("quality eval needs the target column (--label)")?;
    let inputs = columns_for(data, m)?;
    let w = m.window;
    let ends: Vec<usize> = (w - 1..data.len()).filter(|&e| target[e].is_finite()).collect();
    let started = Instant::now();
    let preds = model.infer_many(&inputs, &ends)?;
    let (mut v, mut lo, mut hi) = (vec![], vec![], vec![]);
    for p in &preds {
        if let Prediction::Quality { value, lower, upper } = p {
            v.push(*value);
            lo.push(*lower);
            hi.push(*upper);
        }
    }
    let truth: Vec<f32> = ends.iter().map(|&e| target[e]).collect();
    println!("{} ({}): {} predictions in {:.2} s", m.name, m.architecture, v.len(), started.elapsed().as_secs_f64());
    println!(
        "R2 {:.3}  RMSE {:.4}  band 10-90 % coverage {:.1} %",
        eval::r2(&v, &truth),
        eval::rmse(&v, &truth),
        100.0 * eval::coverage(&lo, &hi, &truth)
    );
    Ok(())
}

fn eval_rul(data: &Dataset, model: &Model, truth_file: &Path) -> Result<()> {
    let m = model.manifest();
    let inputs = columns_for(data, m)?;
    let text = std::fs::read_to_string(truth_file).with_context(|| truth_file.display().to_string())?;
    let truth: Vec<f32> = text
        .split_whitespace()
        .map(|t| t.parse::<f32>().with_context(|| format!("{}: {t:?}", truth_file.display())))
        .collect::<Result<_>>()?;
    let groups = data.group_ranges();
    if groups.len() != truth.len() {
        bail!("{} units in the data, {} values in {}", groups.len(), truth.len(), truth_file.display());
    }
    let started = Instant::now();
    let mut pred = Vec::with_capacity(groups.len());
    for g in &groups {
        // The last `window` rows of the unit, the first row repeated if the unit is shorter.
        let rows: Vec<Vec<f32>> =
            (0..m.window).map(|k| inputs[(g.end as isize - (m.window - k) as isize).max(g.start as isize) as usize].clone()).collect();
        match model.infer(&rows)? {
            Prediction::Rul { value, .. } => pred.push(value),
            other => bail!("not a rul model: {other:?}"),
        }
    }
    let cap = m.calibration.get("cap").copied().unwrap_or(f64::INFINITY) as f32;
    let capped: Vec<f32> = truth.iter().map(|t| t.min(cap)).collect();
    println!("{} ({}): {} units in {:.2} s", m.name, m.architecture, pred.len(), started.elapsed().as_secs_f64());
    println!("true RUL capped at {cap}: RMSE {:.2}  NASA score {:.0}", eval::rmse(&pred, &capped), eval::nasa_score(&pred, &capped));
    println!("true RUL uncapped:       RMSE {:.2}  NASA score {:.0}", eval::rmse(&pred, &truth), eval::nasa_score(&pred, &truth));
    Ok(())
}

/// The data's columns in the model's input order.
fn columns_for(data: &Dataset, m: &edge_models::Manifest) -> Result<Vec<Vec<f32>>> {
    let idx: Vec<usize> = m
        .inputs
        .iter()
        .map(|n| data.column(n).with_context(|| format!("the data has no column {n:?} that the model reads")))
        .collect::<Result<_>>()?;
    Ok(data.rows.iter().map(|r| idx.iter().map(|&i| r[i]).collect()).collect())
}
