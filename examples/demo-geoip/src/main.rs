//! `sluice-demo-geoip PATH`: writes the demo GeoIP database to PATH (its folder is created).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: sluice-demo-geoip PATH");
        return ExitCode::from(2);
    };
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| sluice_demo_geoip::write(&path, "Linköping"));
    match written {
        Ok(()) => {
            println!(
                "wrote {}: {} is in Linköping, Sweden; nothing else is known",
                path.display(),
                sluice_demo_geoip::SAMPLE_IP
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot write {}: {error}", path.display());
            ExitCode::from(2)
        }
    }
}
