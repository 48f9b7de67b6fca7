//! What the RDMA tests share: the verbs device's address, or why they
//! are skipped here and how to run them.

use std::fs;
use std::process::Command;

/// The verbs device's IPv4 address, or why these tests cannot run here.
pub fn rdma_ip() -> Result<String, String> {
    if !cfg!(feature = "rdma") {
        return Err("built without the `rdma` feature".into());
    }
    let devices: Vec<_> = fs::read_dir("/sys/class/infiniband")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    if devices.is_empty() {
        return Err("no RDMA device on this host".into());
    }
    if let Ok(ip) = std::env::var("CKPTFS_RDMA_IP") {
        return Ok(ip);
    }
    // The netdev under the first device, then its address.
    let dev = devices[0].to_string_lossy().into_owned();
    let ndev = fs::read_to_string(format!(
        "/sys/class/infiniband/{dev}/ports/1/gid_attrs/ndevs/0"
    ))
    .map_err(|e| format!("{dev} has no network device: {e}"))?;
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", ndev.trim()])
        .output()
        .map_err(|e| format!("ip addr: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} has no IPv4 address", ndev.trim()))
}

/// The address to test over, or `None` after saying why and how to run.
pub fn setup(test: &str) -> Option<String> {
    match rdma_ip() {
        Ok(ip) => Some(ip),
        Err(why) => {
            eprintln!(
                "{test}: skipped ({why}). These tests need a verbs device and the `rdma` \
                 feature: `bash scripts/test.sh` runs them in a soft-RoCE QEMU guest; on a \
                 host with a device, `cargo test -p ckptfs --features rdma --test rdma \
                 --test rdma_verbs`."
            );
            None
        }
    }
}
