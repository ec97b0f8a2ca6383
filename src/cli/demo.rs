//! `strata demo`: the main job on an embedded default. Writes a small sample tree, builds a
//! RAFS v6 image from it, checks every chunk, inspects it, and reads every file back through
//! the reader and the chunk cache (cold, then warm), comparing bytes with the source.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::rafs::blob::BlobTarget;
use crate::rafs::build::{build_dir, BuildOptions};
use crate::rafs::check::check;
use crate::rafs::merge::WhiteoutSpec;
use crate::rafs::reader::Image;
use crate::rafs::tree::ImageConfig;
use crate::storage::backend::{BlobBackend, LocalFs};
use crate::storage::cache::ChunkCache;

/// `demo` flags.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Work directory (default: a new directory under the system temp dir, removed afterwards).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    pub keep: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The embedded sample tree: (path, content). Sizes cover inline-sized, multi-chunk and
/// duplicate (deduplicated) files.
fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
    let big: Vec<u8> =
        (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    vec![
        ("etc/hostname", b"strata-demo\n".to_vec()),
        ("etc/motd", b"Welcome to a RAFS v6 image built by strata.\n".to_vec()),
        ("usr/bin/hello", b"#!/bin/sh\necho hello from strata\n".to_vec()),
        ("usr/lib/libbig.so", big),
        ("usr/share/doc/a.txt", b"same content\n".repeat(1000)),
        ("usr/share/doc/b.txt", b"same content\n".repeat(1000)),
        ("var/empty.log", Vec::new()),
    ]
}

fn write_sample(root: &Path) -> Result<()> {
    for (p, data) in sample_files() {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        std::fs::write(&path, data)?;
    }
    symlink("hello", root.join("usr/bin/hi"))?;
    std::fs::hard_link(root.join("etc/motd"), root.join("etc/motd.link"))?;
    // Best effort: tmpfs without user xattrs simply shows none.
    let _ = xattr::set(root.join("usr/bin/hello"), "user.demo", b"yes");
    Ok(())
}

/// Run the demo.
pub fn run(a: DemoArgs) -> Result<()> {
    let (work, remove) = match &a.workdir {
        Some(w) => (w.clone(), false),
        None => (std::env::temp_dir().join(format!("strata-demo-{}", std::process::id())), !a.keep),
    };
    if work.exists() && std::fs::read_dir(&work)?.next().is_some() {
        bail!("{} exists and is not empty", work.display());
    }
    let result = demo_in(&work, a.json);
    if remove {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn demo_in(work: &Path, json: bool) -> Result<()> {
    let src = work.join("src");
    let blobs = work.join("blobs");
    let cache = work.join("cache");
    for d in [&src, &blobs, &cache] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    write_sample(&src)?;
    let say = |s: String| {
        if !json {
            println!("{s}");
        }
    };

    // 1. Build.
    let opts = BuildOptions {
        config: ImageConfig::default(),
        aligned_chunk: false,
        whiteout_spec: WhiteoutSpec::Oci,
        prefetch: vec![b"/usr/bin/hello".to_vec()],
        blob: BlobTarget::Dir(blobs.clone()),
        progress: false,
    };
    let out = build_dir(&src, None, &opts)?;
    let boot = work.join("bootstrap");
    let report = super::image::write_tree(&out.tree, &boot, true)?;
    let (blob, _) = out.blob.clone().context("the sample has data, so a blob")?;
    say(format!(
        "1. built {} ({} inodes, {} bytes) + blob {}… ({} chunks, {} bytes stored, {} deduplicated)",
        boot.display(),
        report.inodes,
        report.bootstrap_size,
        &blob.blob_id[..12],
        blob.chunk_count,
        blob.compressed_size,
        out.stats.chunks_deduplicated
    ));

    // 2. Check every chunk.
    let img = Image::open(&boot)?;
    let backend = Arc::new(LocalFs::new(&blobs));
    let direct = crate::storage::cache::DirectReader::new(backend.clone(), &img.blobs)?;
    let r = check(&img, Some(&direct))?;
    if !r.chunk_errors.is_empty() {
        bail!("check failed: {:?}", r.chunk_errors);
    }
    say(format!(
        "2. check: {} inodes, {} files, {} chunks verified",
        r.inodes, r.files, r.chunks_verified
    ));

    // 3. Inspect.
    let hello = img.resolve(b"/usr/bin/hello")?.context("hello in image")?;
    say(format!(
        "3. inspect: {:?}, chunk size {:#x}, {} / {}, prefetch table {:?}, /usr/bin/hello nid {} xattrs {:?}",
        img.kind,
        img.chunk_size,
        img.compressor,
        img.digester,
        img.prefetch,
        hello.nid,
        img.xattrs(&hello)?.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>()
    ));

    // 4. Read everything back through the chunk cache: cold, then warm.
    let before = backend.metrics().snapshot();
    let cache = ChunkCache::open(&cache, backend.clone(), &img.blobs, false)?;
    let mut files = 0;
    let mut bytes = 0;
    for pass in ["cold", "warm"] {
        let start = backend.metrics().snapshot();
        for (p, want) in sample_files() {
            let inode =
                img.resolve(format!("/{p}").as_bytes())?.with_context(|| format!("{p} missing"))?;
            let got = img.read(&inode, 0, inode.disk.size, &cache)?;
            if got != want {
                bail!("{p}: bytes differ from the source");
            }
            if pass == "cold" {
                files += 1;
                bytes += got.len();
            }
        }
        let end = backend.metrics().snapshot();
        say(format!(
            "4. read back {files} files ({bytes} bytes) {pass}: {} backend reads, {} bytes fetched; identical to the source",
            end.read_count - start.read_count,
            end.read_bytes - start.read_bytes
        ));
    }
    let link = img.resolve(b"/usr/bin/hi")?.context("symlink")?;
    let motd = img.resolve(b"/etc/motd")?.context("motd")?;
    let motd2 = img.resolve(b"/etc/motd.link")?.context("hardlink")?;
    say(format!(
        "   /usr/bin/hi -> {}; /etc/motd and /etc/motd.link share nid {} (nlink {})",
        String::from_utf8_lossy(&img.readlink(&link)?),
        motd.nid,
        motd.disk.nlink
    ));
    if motd.nid != motd2.nid {
        bail!("hardlinks do not share an inode");
    }

    // 5. Serve the image with stratad's FUSE server and read it through the kernel.
    let kernel = serve_and_read(work, &boot, &blobs)?;
    match &kernel {
        Some(k) => {
            say(format!(
                "5. stratad: mounted at {}, read {} files ({} bytes) through the kernel; identical to the source; unmounted",
                k.mnt.display(), k.files, k.bytes
            ));
            say(format!(
                "   access log {} (first-touch, {} events); files in the order they were first read:",
                k.log.display(),
                k.events
            ));
            for t in &k.touched {
                say(format!("   {t}"));
            }
        }
        None => say("5. stratad: skipped (mounting FUSE needs root and /dev/fuse; run as root to see the kernel read the image)".into()),
    }

    // 6. The same image as the lower layer of a writable overlay.
    match write_overlay(work, &boot, &blobs)? {
        Some(upper) => {
            say("6. overlay: mounted writable over the image; appended to /etc/motd (copy-up), created /root/notes, removed /var/empty.log, renamed /usr/share/doc to /usr/share/docs; the upper directory now holds:".into());
            for line in upper {
                say(format!("   {line}"));
            }
        }
        None => say("6. overlay: skipped (needs root and /dev/fuse)".into()),
    }
    if json {
        let after = backend.metrics().snapshot();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "bootstrap_size": report.bootstrap_size, "inodes": report.inodes,
                "blob_id": blob.blob_id, "chunks": blob.chunk_count, "deduplicated": out.stats.chunks_deduplicated,
                "verified_chunks": r.chunks_verified, "files_read": files, "bytes_read": bytes,
                "backend_reads": after.read_count - before.read_count, "cache": cache.metrics().hits,
                "fuse_files_read": kernel.as_ref().map(|k| k.files),
                "first_touch": kernel.as_ref().map(|k| k.touched.clone()),
            }))?
        );
    }
    Ok(())
}

/// Mount the image writable (an overlay with an upper directory), change it, unmount, and
/// describe the upper directory: kernel overlayfs's format (whiteouts, redirects, copy-ups).
fn write_overlay(work: &Path, boot: &Path, blobs: &Path) -> Result<Option<Vec<String>>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        return Ok(None);
    }
    let (mnt, upper, wdir) = (work.join("rw"), work.join("upper"), work.join("overlay-work"));
    for d in [&mnt, &upper, &wdir] {
        std::fs::create_dir_all(d)?;
    }
    let events = std::sync::Arc::new(crate::daemon::metrics::Events::default());
    let mut cfg = crate::daemon::config::DaemonConfig::localfs(blobs.to_path_buf());
    cfg.cache.work_dir = work.join("rw-cache");
    let (_inst, rafs) = crate::daemon::service::Instance::open("/", boot, cfg, events)?;
    let layer = crate::overlay::layer::RafsLayer::new(
        rafs.image().clone(),
        rafs.chunk_reader(),
        boot.display().to_string(),
    );
    let fs = crate::overlay::OverlayFs::new(crate::overlay::OverlayOptions {
        upper: upper.clone(),
        work: wdir,
        lowers: vec![std::sync::Arc::new(layer)],
        sync_copyup: true,
        timeout: crate::overlay::DEFAULT_TIMEOUT,
        passthrough: true,
    })?;
    let serving = crate::daemon::serving::Serving::mount(
        &mnt,
        std::sync::Arc::new(fs),
        2,
        crate::daemon::serving::Kind::Writable("strata-demo"),
        || {},
    )?;
    let changed = (|| -> Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("etc/motd"))?
            .write_all(b"changed\n")?;
        std::fs::create_dir_all(mnt.join("root"))?;
        std::fs::write(mnt.join("root/notes"), b"written through the overlay\n")?;
        std::fs::remove_file(mnt.join("var/empty.log"))?;
        std::fs::rename(mnt.join("usr/share/doc"), mnt.join("usr/share/docs"))?;
        if std::fs::read(mnt.join("usr/share/docs/a.txt"))? != b"same content\n".repeat(1000) {
            bail!("a renamed lower directory lost its content");
        }
        Ok(())
    })();
    serving.stop();
    changed?;
    let mut lines = Vec::new();
    let mut stack = vec![upper.clone()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(&upper).unwrap_or(&p).display().to_string();
            let m = std::fs::symlink_metadata(&p)?;
            let what = if m.file_type().is_char_device() && m.rdev() == 0 {
                "whiteout (char 0/0)".to_string()
            } else if m.is_dir() {
                stack.push(p.clone());
                match xattr::get(&p, crate::overlay::upper::REDIRECT)? {
                    Some(r) => format!("dir, redirect to {}", String::from_utf8_lossy(&r)),
                    None => "dir".to_string(),
                }
            } else {
                format!("file, {} bytes", m.len())
            };
            lines.push(format!("/{rel}: {what}"));
        }
    }
    Ok(Some(lines))
}

/// Mount the image with stratad's FUSE server under `work/mnt` with a first-touch access log,
/// read every sample file through the kernel and compare, unmount, and read the log back.
/// `None` when not root or without /dev/fuse.
fn serve_and_read(work: &Path, boot: &Path, blobs: &Path) -> Result<Option<Served>> {
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        return Ok(None);
    }
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    crate::daemon::log::set_level(crate::daemon::log::Level::Warn);
    let (tx, _rx) = std::sync::mpsc::channel();
    let daemon = crate::daemon::service::Daemon::new("demo".into(), None, None, tx);
    let mut cfg = crate::daemon::config::DaemonConfig::localfs(blobs.to_path_buf());
    cfg.cache.work_dir = work.join("fuse-cache");
    let log = work.join("access.log");
    cfg.accesslog = crate::accesslog::AccessLogConfig {
        path: log.clone(),
        mode: crate::accesslog::Mode::FirstTouch,
        ..Default::default()
    };
    daemon.mount_instance("/", boot, cfg)?;
    let serving = crate::daemon::serving::Serving::mount(
        &mnt,
        daemon.vfs(),
        2,
        crate::daemon::serving::Kind::ReadOnly,
        || {},
    )?;
    let result = (|| -> Result<(usize, usize)> {
        let mut bytes = 0;
        let files = sample_files();
        for (p, want) in &files {
            let got =
                std::fs::read(mnt.join(p)).with_context(|| format!("reading {p} through FUSE"))?;
            if &got != want {
                bail!("{p}: bytes read through FUSE differ from the source");
            }
            bytes += got.len();
        }
        if std::fs::read_link(mnt.join("usr/bin/hi"))? != Path::new("hello") {
            bail!("symlink target differs through FUSE");
        }
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(mnt.join("etc/motd"))?,
            std::fs::metadata(mnt.join("etc/motd.link"))?,
        );
        if a.ino() != b.ino() || a.nlink() != 2 {
            bail!("hardlinks are not one inode through FUSE");
        }
        Ok((files.len(), bytes))
    })();
    serving.stop();
    daemon.flush_all();
    let (n, bytes) = result?;
    let replay = crate::accesslog::replay_path(&log, true)?;
    let order = crate::accesslog::report::read_order(&replay.events);
    let touched = order
        .into_iter()
        .map(|(path, ranges)| {
            let spans: Vec<String> = ranges.iter().map(|[o, l]| format!("{o}+{l}")).collect();
            format!("{path} [{}]", spans.join(", "))
        })
        .collect();
    Ok(Some(Served { mnt, files: n, bytes, events: replay.events.len(), log, touched }))
}

/// What step 5 saw.
struct Served {
    mnt: PathBuf,
    files: usize,
    bytes: usize,
    /// Events in the access log.
    events: usize,
    log: PathBuf,
    /// Files in first-read order, with the byte ranges read.
    touched: Vec<String>,
}
