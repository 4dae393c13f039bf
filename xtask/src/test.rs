pub fn cmd_test(_args: &[String]) -> Result<(), String> { Err("not yet".into()) }
