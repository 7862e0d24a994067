//! `wgcnn fetch` against a local HTTP server on 127.0.0.1 (never the real
//! internet): download, checksum failure, mirror fallback, retry, CIFAR-10
//! extraction.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wgcnn::data::DatasetKind;
use wgcnn::fetch::{CIFAR10_ARCHIVE, RemoteFile, fetch_from};

/// What the server answers for a path: a list of (status, body) consumed in
/// order, the last one repeating.
type Routes = HashMap<String, Vec<(u16, Vec<u8>)>>;

/// A tiny HTTP/1.1 server on 127.0.0.1; returns its base URL and the log of
/// requested paths.
fn serve(routes: Routes) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    let routes = Arc::new(Mutex::new(routes));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(path.clone());
            let (status, body) = {
                let mut routes = routes.lock().unwrap();
                match routes.get_mut(&path) {
                    Some(answers) if answers.len() > 1 => answers.remove(0),
                    Some(answers) => answers[0].clone(),
                    None => (404, b"not found".to_vec()),
                }
            };
            let reason = match status {
                200 => "OK",
                404 => "Not Found",
                _ => "Error",
            };
            let head = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (base, log)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgcnn-fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn no_temp_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".part-"), "left behind: {name}");
        }
    }
}

fn quiet() -> impl FnMut(&str) {
    |line: &str| eprintln!("{line}")
}

#[test]
fn downloads_verifies_and_skips_what_is_there() {
    let a = b"first file".to_vec();
    let b = vec![7u8; 200_000];
    let routes = Routes::from([
        ("/m/a.gz".to_string(), vec![(200, a.clone())]),
        ("/m/b.gz".to_string(), vec![(200, b.clone())]),
    ]);
    let (base, log) = serve(routes);
    let dir = temp_dir("ok");
    let files = [
        RemoteFile::new("a.gz", &sha256(&a)),
        RemoteFile::new("b.gz", &sha256(&b)),
    ];
    let mirrors = [format!("{base}/m/")];
    fetch_from(DatasetKind::Mnist, &files, &mirrors, &dir, &mut quiet()).unwrap();
    assert_eq!(std::fs::read(dir.join("a.gz")).unwrap(), a);
    assert_eq!(std::fs::read(dir.join("b.gz")).unwrap(), b);
    no_temp_files(&dir);
    assert_eq!(log.lock().unwrap().len(), 2);

    // A second fetch finds the verified files and downloads nothing.
    let mut lines = Vec::new();
    fetch_from(DatasetKind::Mnist, &files, &mirrors, &dir, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(log.lock().unwrap().len(), 2);
    assert!(
        lines.iter().all(|l| l.contains("already present")),
        "{lines:?}"
    );
}

#[test]
fn checksum_mismatch_names_the_file_and_both_hashes() {
    let good = b"the real bytes".to_vec();
    let bad = b"something else".to_vec();
    let routes = Routes::from([(
        "/m/t10k-images-idx3-ubyte.gz".to_string(),
        vec![(200, bad.clone())],
    )]);
    let (base, _) = serve(routes);
    let dir = temp_dir("bad");
    let files = [RemoteFile::new("t10k-images-idx3-ubyte.gz", &sha256(&good))];
    let message = fetch_from(
        DatasetKind::Mnist,
        &files,
        &[format!("{base}/m")],
        &dir,
        &mut quiet(),
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("t10k-images-idx3-ubyte.gz"), "{message}");
    assert!(message.contains(&sha256(&good)), "{message}");
    assert!(message.contains(&sha256(&bad)), "{message}");
    assert!(!dir.join("t10k-images-idx3-ubyte.gz").exists());
    no_temp_files(&dir);
}

#[test]
fn a_failing_mirror_falls_back_to_the_next() {
    let body = b"served by the second mirror".to_vec();
    let routes = Routes::from([
        ("/dead/f.gz".to_string(), vec![(404, b"gone".to_vec())]),
        ("/alive/f.gz".to_string(), vec![(200, body.clone())]),
    ]);
    let (base, log) = serve(routes);
    let dir = temp_dir("mirror");
    let files = [RemoteFile::new("f.gz", &sha256(&body))];
    let mirrors = [format!("{base}/dead/"), format!("{base}/alive/")];
    fetch_from(
        DatasetKind::FashionMnist,
        &files,
        &mirrors,
        &dir,
        &mut quiet(),
    )
    .unwrap();
    assert_eq!(std::fs::read(dir.join("f.gz")).unwrap(), body);
    assert_eq!(*log.lock().unwrap(), ["/dead/f.gz", "/alive/f.gz"]);

    // Every mirror failing: the error lists each one.
    let dir = temp_dir("none");
    let message = fetch_from(
        DatasetKind::FashionMnist,
        &[RemoteFile::new("missing.gz", &sha256(b""))],
        &mirrors,
        &dir,
        &mut quiet(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("/dead/missing.gz") && message.contains("/alive/missing.gz"),
        "{message}"
    );
    assert!(message.contains("404"), "{message}");
}

#[test]
fn a_server_error_is_retried() {
    let body = b"second time lucky".to_vec();
    let routes = Routes::from([(
        "/m/r.gz".to_string(),
        vec![(503, b"busy".to_vec()), (200, body.clone())],
    )]);
    let (base, log) = serve(routes);
    let dir = temp_dir("retry");
    let files = [RemoteFile::new("r.gz", &sha256(&body))];
    fetch_from(
        DatasetKind::Mnist,
        &files,
        &[format!("{base}/m/")],
        &dir,
        &mut quiet(),
    )
    .unwrap();
    assert_eq!(std::fs::read(dir.join("r.gz")).unwrap(), body);
    assert_eq!(*log.lock().unwrap(), ["/m/r.gz", "/m/r.gz"]);
}

/// A ustar archive holding `files` under `cifar-10-batches-bin/`, gzipped.
fn cifar_archive(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, bytes) in files {
        let mut header = [0u8; 512];
        let path = format!("cifar-10-batches-bin/{name}");
        header[..path.len()].copy_from_slice(path.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", bytes.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[148..156].copy_from_slice(b"        ");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        tar.extend_from_slice(&header);
        tar.extend_from_slice(bytes);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn cifar10_archive_is_extracted_where_train_finds_it() {
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
        "batches.meta.txt",
    ];
    let files: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, vec![i as u8; 3073 * 2]))
        .collect();
    let archive = cifar_archive(&files);
    let routes = Routes::from([(
        format!("/kriz/{CIFAR10_ARCHIVE}"),
        vec![(200, archive.clone())],
    )]);
    let (base, _) = serve(routes);
    let dir = temp_dir("cifar");
    fetch_from(
        DatasetKind::Cifar10,
        &[RemoteFile::new(CIFAR10_ARCHIVE, &sha256(&archive))],
        &[format!("{base}/kriz/")],
        &dir,
        &mut quiet(),
    )
    .unwrap();
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
    }
    assert!(
        !dir.join(CIFAR10_ARCHIVE).exists(),
        "the archive is removed"
    );
    assert_eq!(
        wgcnn::data::locate(DatasetKind::Cifar10, Some(&dir)),
        Some(dir.clone())
    );
}

#[test]
fn official_lists_are_complete() {
    use wgcnn::fetch::{official_mirrors, standard_files};
    for kind in [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
    ] {
        assert!(official_mirrors(kind).len() >= 2, "{kind}");
        for f in standard_files(kind) {
            assert_eq!(f.sha256.len(), 64, "{}", f.name);
            assert!(
                f.sha256.chars().all(|c| c.is_ascii_hexdigit()),
                "{}",
                f.name
            );
        }
    }
    assert_eq!(standard_files(DatasetKind::Mnist).len(), 4);
    assert_eq!(standard_files(DatasetKind::FashionMnist).len(), 4);
}
