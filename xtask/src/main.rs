mod toolchain;
use anyhow::Result;
fn main() -> Result<()> {
    let path = toolchain::ensure()?;
    println!("{path:?}");
    Ok(())
}
