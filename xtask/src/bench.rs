pub fn cmd_bench(_args: &[String]) -> Result<(), String> { Err("not yet".into()) }
