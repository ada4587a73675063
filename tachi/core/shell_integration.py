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
# command runs before each prompt. Its $? is the command's only if nothing ran
# before it in PROMPT_COMMAND (a tool that prepends itself): then the end mark
# carries no status rather than a wrong one. ``tachi run`` does not depend on
# these hooks (its typed line prints marks of its own).
_BASH_PROMPT = (
    '__tachi_rc=$?; case "$PROMPT_COMMAND" in __tachi_rc=*) ;; *) __tachi_rc= ;; esac;'
    ' [ -n "${__tachi_s-}" ] && __tachi_rc=$__tachi_s;'
    ' printf "\\033]133;D;%s\\007" "$__tachi_rc";'
    ' [ -n "${__tachi_id-}" ] && [ -z "${__tachi_s-}" ]'
    ' && printf "\\033]133;D;%s;%s\\007" "$__tachi_rc" "$__tachi_id";'
    ' unset __tachi_id __tachi_s; printf "\\033]133;A\\007"'
)
_BASH_PS0 = "\\033]133;C\\007"
# ``tachi run`` types `` __tachi_b ID;eval $'CMD';__tachi_e`` where these
# exist (see tachi.daemon.run_ops.typed_line): start mark, then end mark with
# the status ``eval`` left. Two functions around ``eval``, not one with
# ``eval`` inside: in a function, ``declare``/``typeset`` would make the
# command's variables local and ``return`` would skip the end mark. Both pass
# the status on, so ``$?`` at the start of a run is the previous run's.
_RUN_FUNCTIONS = (
    "__tachi_b() { local __tachi_r=$?; __tachi_id=$1;"
    " printf '\\033]133;C;%s\\007' \"$1\"; return $__tachi_r; }\n"
    "__tachi_e() { __tachi_s=$?;"
    ' printf \'\\033]133;D;%s;%s\\007\' "$__tachi_s" "$__tachi_id"; return $__tachi_s; }\n'
)
# Set in the rc file, so nothing of tachi's is in the environment that the
# shell passes on to its children (a nested `bash --norc` would run the hook).
_BASH_HOOKS = (
    """case "$PS0" in *133\\;C*) ;; *) PS0="${PS0}\\033]133;C\\007" ;; esac
__tachi_pc='@PROMPT@'
case "$PROMPT_COMMAND" in
  *__tachi_rc*) ;;
  *) PROMPT_COMMAND="$__tachi_pc${PROMPT_COMMAND:+; $PROMPT_COMMAND}" ;;
esac
unset __tachi_pc
export -n PS0 PROMPT_COMMAND 2>/dev/null
# tachi's typed lines stay out of the history (only those: HISTCONTROL is yours).
HISTIGNORE="${HISTIGNORE:+$HISTIGNORE:} __tachi_b *: __tachi_id=*"
""".replace("@PROMPT@", _BASH_PROMPT.replace("'", "'\\''"))
    + _RUN_FUNCTIONS
)
_BASH_RC = (
    "# tachi shell integration (OSC 133), then the user's own ~/.bashrc.\n"
    "[ -f ~/.bashrc ] && . ~/.bashrc\n" + _BASH_HOOKS
)
#: For ``bash --rcfile FILE``: that file (``@FILE@``) instead of ~/.bashrc.
_BASH_RC_OF = (
    "# tachi shell integration (OSC 133), after the rc file bash was given.\n"
    "[ -f @FILE@ ] && . @FILE@\n" + _BASH_HOOKS
)
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
__tachi_precmd() {
  local rc=$?
  [[ -n ${__tachi_s-} ]] && rc=$__tachi_s
  printf '\\033]133;D;%s\\007' "$rc"
  # A run whose line Ctrl-C cut short: its end mark, from here.
  [[ -n ${__tachi_id-} && -z ${__tachi_s-} ]] && printf '\\033]133;D;%s;%s\\007' "$rc" "$__tachi_id"
  unset __tachi_id __tachi_s
  printf '\\033]133;A\\007'
}
__tachi_preexec() { printf '\\033]133;C\\007'; }
precmd_functions=(__tachi_precmd $precmd_functions)
preexec_functions+=(__tachi_preexec)
# tachi's typed lines stay out of the saved history (only those).
__tachi_nohist() { [[ $1 != ' __tachi_'* ]]; }
zshaddhistory_functions+=(__tachi_nohist)
@RUN@# Kept for .zlogin, but not passed on to the shell's children.
typeset +x TACHI_USER_ZDOTDIR
""".replace("@RUN@", _RUN_FUNCTIONS),
}
_FISH = (
    "function __tachi_preexec --on-event fish_preexec; printf '\\e]133;C\\a'; end; "
    "function __tachi_postexec --on-event fish_postexec; set -l rc $status;"
    " set -q __tachi_s; and set rc $__tachi_s; printf '\\e]133;D;%s\\a' $rc;"
    " if set -q __tachi_id; and not set -q __tachi_s;"
    " printf '\\e]133;D;%s;%s\\a' $rc $__tachi_id; end;"
    " set -e __tachi_id; set -e __tachi_s; end; "
    "function __tachi_prompt --on-event fish_prompt; printf '\\e]133;A\\a'; end; "
    # For tachi run's short line (fish keeps lines starting with a space out
    # of its history already).
    "function __tachi_b; set -l r $status; set -g __tachi_id $argv[1];"
    " printf '\\e]133;C;%s\\a' $argv[1]; return $r; end; "
    "function __tachi_e; set -g __tachi_s $status;"
    " printf '\\e]133;D;%s;%s\\a' $__tachi_s $__tachi_id; return $__tachi_s; end; "
    # A bare `if`, `for`, `switch` … is fish's help on them, in a pager that
    # waits for keys: during a tachi run (``__tachi_id`` set), without one.
    "functions -q __fish_print_help; and functions -c __fish_print_help __tachi_help;"
    " and function __fish_print_help; if set -q __tachi_id; PAGER=cat __tachi_help $argv;"
    " else; __tachi_help $argv; end; end"
)
SHELLS = ("bash", "zsh", "fish")
#: The first line of the rc file tachi gives bash (how a run knows the shell
#: in front is the one it integrated, with the functions above).
RC_MARK = "# tachi shell integration"


def _bash_argv(argv: list[str], directory: Path, env: dict[str, str]) -> list[str]:
    """bash's ``argv`` with an rc file that adds the hooks: after ~/.bashrc,
    or after the ``--rcfile`` it was given. ``--norc`` and ``--posix``
    read no rc file: the hooks then come in the environment (``env`` is
    changed) and take themselves out of it at the first prompt."""
    import shlex

    rest = list(argv[1:])
    # --norc cannot become --rcfile: bash then also reads /etc/bash.bashrc
    # (Debian's, which sets PS1), as --norc would not. Like --posix, it gets
    # the hooks in its environment, out of it again at the first prompt.
    if "--posix" in rest or "--norc" in rest:
        env["PS0"] = env.get("PS0", "") + _BASH_PS0
        env["PROMPT_COMMAND"] = (
            _BASH_PROMPT
            + "; export -n PS0 PROMPT_COMMAND"
            + ("; " + env["PROMPT_COMMAND"] if env.get("PROMPT_COMMAND") else "")
        )
        return argv
    rc = directory / "bashrc"
    text = _BASH_RC
    for flag in ("--rcfile", "--init-file"):
        if flag in rest:
            i = rest.index(flag)
            given = rest[i + 1] if i + 1 < len(rest) else ""
            del rest[i : i + 2]
            text = _BASH_RC_OF.replace("@FILE@", shlex.quote(given))
    rc.write_text(text)
    return [argv[0], "--rcfile", str(rc), *rest]


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
        argv = _bash_argv(argv, directory, env)
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
