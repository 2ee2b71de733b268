fn main() {
    eprintln!("tortie-node: not implemented yet");
    std::process::exit(1);
}
