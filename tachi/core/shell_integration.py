"""Shell integration: OSC 133 marks from bash, zsh and fish in the sessions tachi
starts, so that tachi knows where each command's output starts and ends, and
its exit status (``tachi run``, command events).

The marks are the ones terminals use (FinalTerm, iTerm2, kitty, WezTerm):
``ESC ] 133 ; A`` prompt start, ``C`` command output start, ``D ; STATUS``
command finished. Nothing on disk that belongs to the user changes, and the
prompt the user sees stays as it is: the hooks print invisible escape
sequences only. Other shells get no integration; ``tachi run`` then wraps the
command in a unique sentinel instead.
"""

from __future__ import annotations

import os
from pathlib import Path

# bash: PS0 is printed after a command line is read, before it runs; the prompt
# command runs before each prompt, first thing, so $? is still the command's.
_BASH_PROMPT = '__tachi_rc=$?; printf "\\033]133;D;%s\\007\\033]133;A\\007" "$__tachi_rc"'
_BASH_PS0 = "\\033]133;C\\007"
_BASH_RC = """# tachi shell integration (OSC 133), then the user's own ~/.bashrc.
[ -f ~/.bashrc ] && . ~/.bashrc
case "$PS0" in *133\\;C*) ;; *) PS0="${PS0}\\033]133;C\\007" ;; esac
__tachi_pc='__tachi_rc=$?; printf "\\033]133;D;%s\\007\\033]133;A\\007" "$__tachi_rc"'
case "$PROMPT_COMMAND" in
  *__tachi_rc*) ;;
  *) PROMPT_COMMAND="$__tachi_pc${PROMPT_COMMAND:+; $PROMPT_COMMAND}" ;;
esac
"""
_ZSH_FILES = {
    ".zshenv": '[[ -f "${TACHI_USER_ZDOTDIR:-$HOME}/.zshenv" ]]'
    ' && ZDOTDIR="${TACHI_USER_ZDOTDIR:-$HOME}" . "${TACHI_USER_ZDOTDIR:-$HOME}/.zshenv"\n',
    ".zprofile": '[[ -f "${TACHI_USER_ZDOTDIR:-$HOME}/.zprofile" ]]'
    ' && . "${TACHI_USER_ZDOTDIR:-$HOME}/.zprofile"\n',
    ".zlogin": '[[ -f "${TACHI_USER_ZDOTDIR:-$HOME}/.zlogin" ]]'
    ' && . "${TACHI_USER_ZDOTDIR:-$HOME}/.zlogin"\n',
    ".zshrc": """# tachi shell integration (OSC 133), after the user's own .zshrc.
[[ -f "${TACHI_USER_ZDOTDIR:-$HOME}/.zshrc" ]] && . "${TACHI_USER_ZDOTDIR:-$HOME}/.zshrc"
ZDOTDIR="${TACHI_USER_ZDOTDIR:-$HOME}"
__tachi_precmd() { printf '\\033]133;D;%s\\007\\033]133;A\\007' "$?"; }
__tachi_preexec() { printf '\\033]133;C\\007'; }
precmd_functions=(__tachi_precmd $precmd_functions)
preexec_functions+=(__tachi_preexec)
""",
}
_FISH = (
    "function __tachi_preexec --on-event fish_preexec; printf '\\e]133;C\\a'; end; "
    "function __tachi_postexec --on-event fish_postexec; printf '\\e]133;D;%s\\a' $status; end; "
    "function __tachi_prompt --on-event fish_prompt; printf '\\e]133;A\\a'; end"
)
SHELLS = ("bash", "zsh", "fish")


def shell_of(argv: list[str]) -> str | None:
    """``bash``, ``zsh`` or ``fish`` when ``argv`` starts that shell interactively
    (no script, no ``-c``), else ``None``."""
    if not argv:
        return None
    name = os.path.basename(argv[0]).lstrip("-")
    if name not in SHELLS:
        return None
    for arg in argv[1:]:
        if arg == "-c" or not arg.startswith("-"):
            return None
    return name


def integrate(
    argv: list[str], env: dict[str, str], directory: Path
) -> tuple[list[str], dict[str, str]]:
    """``argv`` and ``env`` with OSC 133 hooks for bash, zsh or fish (files kept
    in ``directory``); anything else is returned unchanged."""
    shell = shell_of(argv)
    if shell is None:
        return argv, env
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = dict(env)
    if shell == "bash":
        env["PS0"] = env.get("PS0", "") + _BASH_PS0
        env["PROMPT_COMMAND"] = _BASH_PROMPT + (
            "; " + env["PROMPT_COMMAND"] if env.get("PROMPT_COMMAND") else ""
        )
        if not any(a in ("--norc", "--rcfile", "--init-file", "--posix") for a in argv):
            rc = directory / "bashrc"
            rc.write_text(_BASH_RC)
            argv = [argv[0], "--rcfile", str(rc), *argv[1:]]
    elif shell == "zsh":
        zdot = directory / "zsh"
        zdot.mkdir(exist_ok=True, mode=0o700)
        for name, text in _ZSH_FILES.items():
            (zdot / name).write_text(text)
        env["TACHI_USER_ZDOTDIR"] = env.get("ZDOTDIR") or env.get("HOME", "")
        env["ZDOTDIR"] = str(zdot)
    else:
        argv = [argv[0], "--init-command", _FISH, *argv[1:]]
    return argv, env
