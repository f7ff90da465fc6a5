pub(crate) fn demo() -> std::io::Result<()> {
    Ok(())
}
