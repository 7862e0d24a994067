//! The binary survives being killed: SIGKILL at random moments (between
//! checkpoints and, when the timing allows, in the middle of writing one) always
//! leaves a checkpoint that loads and resumes; SIGINT stops cleanly with exit
//! status 130 and a checkpoint of the exact mid-epoch position; a second SIGINT
//! exits at once without leaving a torn or temporary file.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wgcnn::checkpoint::Checkpoint;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgcnn-kill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The training run every test starts: the small `mlp` on the synthetic set on
/// the CPU path, about 0.2–0.5 s an epoch, a 2.4 MB checkpoint after each.
fn train_args(checkpoint: &Path, batch_size: usize) -> Vec<String> {
    [
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--cpu",
        "--epochs",
        "60",
        "--batch-size",
        &batch_size.to_string(),
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A running `wgcnn`, its output collected by two threads as it comes.
struct Run {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

impl Run {
    fn start(args: &[String]) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wgcnn"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wgcnn starts");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Run {
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        // Give the reader threads a moment to drain the pipes after an exit.
        std::thread::sleep(Duration::from_millis(50));
        format!(
            "--- stdout\n{}--- stderr\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits for the process to end, failing the test after `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("wgcnn did not exit within {limit:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls `until` every millisecond; fails the test (killing the process)
    /// when it has not held within `limit` or the process exited first.
    fn wait_for(&mut self, what: &str, limit: Duration, mut until: impl FnMut(&Run) -> bool) {
        let deadline = Instant::now() + limit;
        while !until(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("wgcnn exited ({status}) before {what}:\n{}", self.output());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("no {what} within {limit:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends `signal` (`libc::SIGINT`, …) to the process.
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The inode of the checkpoint: each atomic write renames a new file over it.
fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Temporary files (`.<name>.tmp-<pid>`) next to `checkpoint`.
fn temporaries(checkpoint: &Path) -> Vec<PathBuf> {
    let prefix = format!(
        ".{}.tmp-",
        checkpoint.file_name().unwrap().to_string_lossy()
    );
    std::fs::read_dir(checkpoint.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect()
}

/// A small deterministic generator for the kill moments (seeded from the
/// clock, printed, so a failure can be replayed by hard-coding the seed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn sigkill_at_random_moments_always_leaves_a_checkpoint_that_resumes() {
    let started = Instant::now();
    let dir = temp_dir("sigkill");
    let checkpoint = dir.join("run.safetensors");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill-moment seed: {seed}");
    let mut rng = Lcg(seed);
    let base = train_args(&checkpoint, 32);
    let (mut last_step, mut mid_write_kills) = (0usize, 0usize);
    for round in 0..5 {
        let mut args = base.clone();
        if round > 0 {
            args.extend(["--resume".to_string(), checkpoint.display().to_string()]);
        }
        let mut run = Run::start(&args);
        // Wait for 1–3 new checkpoints (each write renames a new inode in).
        let wanted = 1 + rng.below(3) as usize;
        let mut seen = inode(&checkpoint);
        let mut fresh = 0;
        run.wait_for("checkpoint", Duration::from_secs(20), |_| {
            let now = inode(&checkpoint);
            if now.is_some() && now != seen {
                seen = now;
                fresh += 1;
            }
            fresh >= wanted
        });
        // Then kill: on odd rounds as soon as the next write's temporary file
        // shows up (mid-write), else after a random delay within the epoch.
        let mut mid_write = false;
        if round % 2 == 1 {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && !mid_write {
                mid_write = !temporaries(&checkpoint).is_empty();
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(250)));
        }
        run.child.kill().unwrap();
        let status = run.wait(Duration::from_secs(5));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "round {round}: killed by SIGKILL"
        );
        mid_write_kills += mid_write as usize;

        let c = Checkpoint::load(&checkpoint).unwrap_or_else(|e| {
            panic!("round {round}: the checkpoint left by SIGKILL does not load: {e}")
        });
        assert!(
            c.state.step > last_step,
            "round {round}: training advanced (step {} after {last_step})",
            c.state.step
        );
        if round > 0 {
            assert!(
                run.output()
                    .contains(&format!("resuming from epoch {}", last_step / 125)),
                "round {round} resumed from the previous checkpoint:\n{}",
                run.output()
            );
        }
        assert!(!run.output().contains("panicked"), "{}", run.output());
        last_step = c.state.step;
        eprintln!(
            "round {round}: killed after {wanted} checkpoint(s){}; checkpoint at epoch {} step {}",
            if mid_write {
                " while writing the next"
            } else {
                ""
            },
            c.state.epoch,
            c.state.step
        );
    }
    // Leftover temporaries of killed writes are inert: a last resume finishes
    // one more epoch normally.
    let epoch = Checkpoint::load(&checkpoint).unwrap().state.epoch;
    let mut args = base.clone();
    args.extend([
        "--resume".to_string(),
        checkpoint.display().to_string(),
        "--stop-after".to_string(),
        (epoch + 1).to_string(),
    ]);
    let mut run = Run::start(&args);
    let status = run.wait(Duration::from_secs(20));
    assert!(status.success(), "final resume: {}", run.output());
    assert!(run.output().contains("final test accuracy"));
    assert_eq!(
        Checkpoint::load(&checkpoint).unwrap().state.epoch,
        epoch + 1
    );
    eprintln!(
        "{mid_write_kills} of 2 mid-write kills hit a write in progress; {} temporary file(s) \
         left by SIGKILL; {:.1} s in all",
        temporaries(&checkpoint).len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigint_stops_after_the_step_with_a_mid_epoch_checkpoint_and_exit_status_130() {
    let dir = temp_dir("sigint");
    let checkpoint = dir.join("run.safetensors");
    // Batches of 8: 500 steps an epoch, so the signal lands well inside one.
    let args = train_args(&checkpoint, 8);
    let mut run = Run::start(&args);
    run.wait_for("progress in epoch 2", Duration::from_secs(20), |r| {
        r.stdout.lock().unwrap().contains("epoch 2/60 step 50/500")
    });
    run.signal(libc::SIGINT);
    let status = run.wait(Duration::from_secs(10));
    let output = run.output();
    assert_eq!(status.code(), Some(130), "exit status 130:\n{output}");
    assert!(!output.contains("panicked"), "{output}");
    let message = "training stopped: interrupted at epoch 2/60, batch ";
    assert!(output.contains(message), "{output}");
    assert!(
        output.contains(&format!("--resume {}", checkpoint.display())),
        "the message says how to continue:\n{output}"
    );
    let c = Checkpoint::load(&checkpoint).unwrap();
    assert_eq!(c.state.epoch, 1, "epoch 1 complete");
    assert!(
        c.state.epoch_examples_done > 0 && c.state.epoch_examples_done.is_multiple_of(8),
        "a mid-epoch position: {} examples",
        c.state.epoch_examples_done
    );
    assert_eq!(c.state.step, 500 + c.state.epoch_examples_done / 8);
    assert!(
        output.contains(&format!("batch {}/500", c.state.epoch_examples_done / 8)),
        "{output}"
    );
    assert!(temporaries(&checkpoint).is_empty());

    // Resuming continues from that batch and finishes the epoch.
    let mut resume = args.clone();
    resume.extend([
        "--resume".into(),
        checkpoint.display().to_string(),
        "--stop-after".into(),
        "2".into(),
    ]);
    let mut run = Run::start(&resume);
    let status = run.wait(Duration::from_secs(20));
    let output = run.output();
    assert!(status.success(), "{output}");
    assert!(
        output.contains(&format!(
            "resuming from epoch 1 and {} examples into epoch 2 (step {})",
            c.state.epoch_examples_done, c.state.step
        )),
        "{output}"
    );
    let after = Checkpoint::load(&checkpoint).unwrap();
    assert_eq!(
        (
            after.state.epoch,
            after.state.step,
            after.state.epoch_examples_done
        ),
        (2, 1000, 0)
    );

    // The same two epochs without the interruption end with the same bits.
    let straight = dir.join("straight.safetensors");
    let mut args = train_args(&straight, 8);
    args.extend(["--stop-after".into(), "2".into()]);
    let mut run = Run::start(&args);
    assert!(
        run.wait(Duration::from_secs(30)).success(),
        "{}",
        run.output()
    );
    let straight = Checkpoint::load(&straight).unwrap();
    assert_eq!(straight.model.len(), after.model.len());
    for ((name, a), (_, b)) in after.model.iter().zip(&straight.model) {
        assert!(
            a.data == b.data,
            "{name} differs from the uninterrupted run"
        );
    }
    for ((name, a), (_, b)) in after.optimizer.iter().zip(&straight.optimizer) {
        assert!(a == b, "optimizer state of {name} differs");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_stops_like_sigint() {
    let dir = temp_dir("sigterm");
    let checkpoint = dir.join("run.safetensors");
    let mut run = Run::start(&train_args(&checkpoint, 8));
    run.wait_for("progress", Duration::from_secs(20), |r| {
        r.stdout.lock().unwrap().contains("epoch 1/60 step 50/500")
    });
    run.signal(libc::SIGTERM);
    let status = run.wait(Duration::from_secs(10));
    let output = run.output();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(output.contains("interrupted at epoch 1/60"), "{output}");
    let c = Checkpoint::load(&checkpoint).unwrap();
    assert_eq!(c.state.epoch, 0);
    assert!(c.state.epoch_examples_done > 0);
}

/// Sends SIGINT, waits until the handler has announced the clean stop, then
/// sends the second SIGINT. (Two signals sent together would merge into one
/// pending signal.)
fn interrupt_twice(run: &mut Run) {
    run.signal(libc::SIGINT);
    run.wait_for(
        "the first interrupt's notice",
        Duration::from_secs(5),
        |r| r.stderr.lock().unwrap().contains("interrupt: stopping"),
    );
    run.signal(libc::SIGINT);
}

#[test]
fn a_second_sigint_exits_at_once_in_the_middle_of_a_step() {
    let dir = temp_dir("second");
    let checkpoint = dir.join("run.safetensors");
    // fashion-cnn in batches of 128: a step takes a good fraction of a second,
    // far longer than the handler needs to see both signals.
    let mut args = train_args(&checkpoint, 128);
    args[4] = "fashion-cnn".into();
    let mut run = Run::start(&args);
    run.wait_for("progress", Duration::from_secs(30), |r| {
        r.stdout.lock().unwrap().contains("epoch 1/60 step 4/32")
    });
    interrupt_twice(&mut run);
    let status = run.wait(Duration::from_secs(10));
    let output = run.output();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(!output.contains("panicked"), "{output}");
    assert!(
        output.contains("interrupted again: exiting now"),
        "{output}"
    );
    assert!(
        !output.contains("training stopped"),
        "no clean stop: {output}"
    );
    assert!(!checkpoint.exists() && temporaries(&checkpoint).is_empty());
}

#[test]
fn a_second_sigint_during_a_checkpoint_write_keeps_the_old_one_and_removes_the_temporary() {
    let dir = temp_dir("second-write");
    let checkpoint = dir.join("run.safetensors");
    // A wide MLP: a 26 MB checkpoint whose write (and sync) takes long enough
    // to be caught in the act.
    let model = dir.join("wide.toml");
    std::fs::write(
        &model,
        "input = [1, 28, 28]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\n\
         out_features = 2048\n[[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"linear\"\n\
         out_features = 10\n",
    )
    .unwrap();
    let mut args = train_args(&checkpoint, 32);
    args[4] = model.display().to_string();
    for attempt in 0..3 {
        let _ = std::fs::remove_file(&checkpoint);
        let mut run = Run::start(&args);
        // Inside epoch 2, past the first (end-of-epoch) checkpoint: a signal
        // at an epoch's end writes nothing new (that checkpoint holds the
        // point), and the CPU path runs an epoch of this in about a second.
        run.wait_for("progress in epoch 2", Duration::from_secs(30), |r| {
            r.stdout.lock().unwrap().contains("epoch 2/60 step")
        });
        let first = std::fs::read(&checkpoint).unwrap();
        // The first signal makes the run stop after its step and write the
        // interruption checkpoint; the second lands while that is written.
        run.signal(libc::SIGINT);
        run.wait_for(
            "the interruption checkpoint's write",
            Duration::from_secs(10),
            |_| !temporaries(&checkpoint).is_empty(),
        );
        run.signal(libc::SIGINT);
        let status = run.wait(Duration::from_secs(10));
        let output = run.output();
        assert_eq!(status.code(), Some(130), "{output}");
        assert!(!output.contains("panicked"), "{output}");
        assert!(
            temporaries(&checkpoint).is_empty(),
            "no temporary file is left: {:?}",
            temporaries(&checkpoint)
        );
        Checkpoint::load(&checkpoint).expect("a complete checkpoint");
        if output.contains("interrupted again: exiting now") {
            // The write in progress was abandoned: the old checkpoint is intact.
            assert_eq!(std::fs::read(&checkpoint).unwrap(), first);
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        eprintln!("attempt {attempt}: the write finished before the second signal:\n{output}");
    }
    panic!("in 3 tries the second SIGINT never arrived while the checkpoint was being written");
}
