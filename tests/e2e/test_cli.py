"""The quiver CLI's dispatch and `quiver info`."""
import subprocess


def run(bin_, *args):
    return subprocess.run([bin_, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands(quiver_bin):
    r = run(quiver_bin, "--help")
    assert r.returncode == 0
    for cmd in ("serve", "generate", "tokenize", "info", "chat-template", "bench"):
        assert cmd in r.stdout


def test_unknown_command_fails(quiver_bin):
    r = run(quiver_bin, "frobnicate")
    assert r.returncode == 2
    assert "unknown command" in r.stderr


def test_info_embedded(quiver_bin):
    r = run(quiver_bin, "info")
    assert r.returncode == 0, r.stderr
    assert "quiver-tiny" in r.stdout
    assert "KV bytes per token" in r.stdout


def test_info_stories(quiver_bin, stories_dir):
    r = run(quiver_bin, "info", "--model", str(stories_dir))
    assert r.returncode == 0, r.stderr
    assert "llama" in r.stdout
    # 260K parameters: 512x64 tied embedding + 5 layers, counted from the config.
    assert "260032" in r.stdout
    assert "1280 (cpu f32), 640 (cuda bf16)" in r.stdout


def test_info_bad_path(quiver_bin, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox"}')
    r = run(quiver_bin, "info", "--model", str(tmp_path))
    assert r.returncode == 1
    assert "gpt_neox" in r.stderr and "not supported" in r.stderr


def test_load_errors_have_one_separator(quiver_bin, stories_dir, tmp_path):
    """A model that fails to load and a --max-model-len over the model's positions: the message
    names the model once, then the cause, with exactly one ': ' between the parts."""
    missing = tmp_path / "missing"
    r = run(quiver_bin, "serve", "--model", f"m={missing}", "--port", "0")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == (
        f"quiver serve: model 'm' ({missing}): {missing}: No such file or directory (a model is a "
        "Hugging Face directory with config.json, or a GGUF file)")
    r = run(quiver_bin, "serve", "--model", f"s={stories_dir}", "--max-model-len", "100000",
            "--port", "0")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == (
        f"quiver serve: model 's' ({stories_dir}): max_model_len 100000 exceeds the model's 512 "
        "positions")
    cfg = tmp_path / "c.json"
    cfg.write_text('{"models": [{"name": "m", "path": "quiver-tiny", "reasoning_parser": "x"}]}')
    r = run(quiver_bin, "serve", "--config", str(cfg), "--port", "0")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        f"quiver serve: {cfg}: config: model 'm': unknown reasoning parser 'x' "
        "(known: deepseek_r1, qwen3, none)")
    r = run(quiver_bin, "generate", "--model", str(missing), "--prompt", "x")
    assert r.returncode != 0
    assert r.stderr.splitlines()[-1] == (
        f"quiver generate: cannot load the model: {missing}: No such file or directory (a model is a "
        "Hugging Face directory with config.json, or a GGUF file)")
    r = run(quiver_bin, "generate", "--model", str(stories_dir), "--max-model-len", "100000",
            "--prompt", "x")
    assert r.returncode != 0
    assert r.stderr.splitlines()[-1] == "quiver generate: max_model_len 100000 exceeds the model's 512 positions"
