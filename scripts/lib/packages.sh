# Debian packages the tests need, installed when their command is missing:
# `ensure_debian_packages COMMAND:PACKAGE ...` runs `apt-get update` once and
# `apt-get install -y` the packages whose command is not on PATH (as root, or through
# sudo when that works without a password). A COMMAND with a slash is a path pattern
# instead (e.g. /usr/lib/postgresql/*/bin/initdb), present when a file matches it.

ensure_debian_packages() {
    local missing=() pair command package
    for pair in "$@"; do
        command=${pair%%:*}
        package=${pair#*:}
        if [[ $command == */* ]]; then
            if compgen -G "$command" >/dev/null; then continue; fi
        elif command -v "$command" >/dev/null 2>&1; then
            continue
        fi
        case " ${missing[*]} " in *" $package "*) ;; *) missing+=("$package") ;; esac
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "these tests need the Debian packages ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root" >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "these tests need ${missing[*]} and this machine has no apt-get: install them with its package manager" >&2
        return 1
    fi
    echo "installing ${missing[*]} (apt-get)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
