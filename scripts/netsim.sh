#!/usr/bin/env bash
# Emulated hosts for the multi-host tests and benchmarks: Linux network namespaces joined by
# a bridge, each host's egress capped in aggregate and per TCP/UDP flow (cloud links, where
# one stream cannot fill the NIC). Needs root; touches nothing outside its own namespaces.
#
#   scripts/netsim.sh up N [--rate 2gbit] [--flow-rate 500mbit|none] [--flow-slots 64] [--force]
#   scripts/netsim.sh exec I CMD...     run CMD as host I (own hostname acs-hI, NETSIM_* set)
#   scripts/netsim.sh status            hosts, addresses, qdiscs
#   scripts/netsim.sh down [--kill]     remove everything (--kill: end processes left inside)
#
# Layout: host i is namespace acs-h<i> with eth0 = 198.18.0.(i+1)/24 (the benchmarking range,
# no route out), its veth peer p<i> on bridge br0 in namespace acs-sw. Shaping on each host's
# eth0: HTB root 1:, class 1:1 at --rate, and one leaf per flow slot at --flow-rate that
# borrows from 1:1. nftables gives each new connection the next slot (round robin) in its
# conntrack mark, and every packet of the flow is classified by it. How the figures of this
# method were checked is in docs/NETWORK.md.
# Exit codes: 0 ok, 1 error, 2 usage, 3 already up, 4 a kernel feature is missing.
set -euo pipefail

SW=acs-sw
PREFIX=acs-h
STATE="${NETSIM_STATE_DIR:-/run/acspeed-netsim}"

die() { echo "netsim: $*" >&2; exit "${2:-1}"; }
usage() { sed -n '5,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

need_root() { [[ "$(id -u)" == 0 ]] || die "needs root (network namespaces)"; }

# Installs what is missing through apt-get (NETSIM_NO_INSTALL=1: report instead).
need_tools() {
  local missing=() t
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  ((${#missing[@]} == 0)) && return 0
  [[ "${NETSIM_NO_INSTALL:-0}" != 1 ]] && command -v apt-get >/dev/null ||
    die "missing tools: ${missing[*]} (install iproute2 and nftables)"
  local pkgs=()
  for t in "${missing[@]}"; do
    case "$t" in ip | tc) pkgs+=(iproute2) ;; nft) pkgs+=(nftables) ;; unshare) pkgs+=(util-linux) ;; *) pkgs+=("$t") ;; esac
  done
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
}

is_up() { ip netns list 2>/dev/null | grep -qw "$SW"; }

hosts_up() { cat "$STATE/hosts" 2>/dev/null || echo 0; }

# Rates in tc units (bit, kbit, mbit, gbit; decimal) to bits per second.
to_bits() {
  local v="$1" n u
  n="${v%%[a-z]*}"; u="${v#"$n"}"
  [[ "$n" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "bad rate '$v' (e.g. 2gbit, 500mbit)" 2
  case "$u" in
    bit | "") awk -v n="$n" 'BEGIN{printf "%d", n}' ;;
    kbit) awk -v n="$n" 'BEGIN{printf "%d", n*1e3}' ;;
    mbit) awk -v n="$n" 'BEGIN{printf "%d", n*1e6}' ;;
    gbit) awk -v n="$n" 'BEGIN{printf "%d", n*1e9}' ;;
    *) die "bad rate unit in '$v' (bit, kbit, mbit, gbit)" 2 ;;
  esac
}

# Burst of one millisecond of traffic at `bits`/s, at least two full frames.
burst() { awk -v b="$1" 'BEGIN{x=b/8/1000; if (x < 3200) x = 3200; printf "%d", x}'; }

down() {
  local kill=0 ns pid
  [[ "${1:-}" == --kill ]] && kill=1
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^(${PREFIX}[0-9]+|${SW})$" || true); do
    if ((kill)); then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$STATE"
}

shape_host() {
  local ns="$1" rate="$2" flow="$3" slots="$4" k
  local rb fb share
  rb=$(to_bits "$rate")
  ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: htb default 2
  ip netns exec "$ns" tc class add dev eth0 parent 1: classid 1:1 htb rate "$rb"bit ceil "$rb"bit \
    burst "$(burst "$rb")" cburst "$(burst "$rb")" quantum 65536
  if [[ "$flow" == none ]]; then
    ip netns exec "$ns" tc class add dev eth0 parent 1:1 classid 1:2 htb rate "$rb"bit ceil "$rb"bit \
      burst "$(burst "$rb")" cburst "$(burst "$rb")" quantum 65536
    return
  fi
  fb=$(to_bits "$flow")
  # Each leaf is guaranteed an equal share of the link and may borrow up to the flow cap.
  share=$((rb / (slots + 1)))
  for ((k = 0; k <= slots; k++)); do
    local id=$((k == 0 ? 2 : 0x100 + k - 1))
    ip netns exec "$ns" tc class add dev eth0 parent 1:1 classid "1:$(printf '%x' "$id")" htb \
      rate "$share"bit ceil "$fb"bit burst "$(burst "$fb")" cburst "$(burst "$fb")" quantum 65536
  done
  local map="" sep=""
  for ((k = 0; k < slots; k++)); do
    map+="$sep$((k + 1)) : 1:$(printf '%x' $((0x100 + k)))"; sep=", "
  done
  ip netns exec "$ns" nft -f - <<EOF
table inet acs_netsim {
  map flowclass { type mark : classid; elements = { $map } }
  chain raw_out { type filter hook output priority raw; oifname "lo" notrack; }
  chain raw_pre { type filter hook prerouting priority raw; iifname "lo" notrack; }
  chain post {
    type filter hook postrouting priority filter; policy accept;
    oifname != "eth0" accept
    meta l4proto != { tcp, udp } accept
    ct mark 0 ct mark set numgen inc mod $slots offset 1
    meta priority set ct mark map @flowclass
  }
}
EOF
}

up() {
  local n="${1:-}" rate=2gbit flow=500mbit slots=64 force=0
  [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 64)) || die "up: N must be 1..64, got '${n}'" 2
  shift
  while (($#)); do
    case "$1" in
      --rate) rate="${2:?--rate needs a value}"; shift 2 ;;
      --flow-rate) flow="${2:?--flow-rate needs a value}"; shift 2 ;;
      --flow-slots) slots="${2:?--flow-slots needs a value}"; shift 2 ;;
      --force) force=1; shift ;;
      *) die "up: unknown option '$1'" 2 ;;
    esac
  done
  [[ "$slots" =~ ^[0-9]+$ ]] && ((slots >= 1 && slots <= 256)) || die "up: --flow-slots must be 1..256" 2
  to_bits "$rate" >/dev/null
  [[ "$flow" == none ]] || to_bits "$flow" >/dev/null
  need_root
  local tools=(ip tc unshare)
  [[ "$flow" == none ]] || tools+=(nft)
  need_tools "${tools[@]}"
  if is_up; then
    ((force)) || die "already up ($(hosts_up) hosts); 'down' first or 'up --force'" 3
    down --kill
  fi
  # Undo everything on any failure part way.
  trap 'down --kill >/dev/null 2>&1' ERR
  mkdir -p "$STATE"
  ip netns add "$SW"
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 up
  ip -n "$SW" link set lo up
  local i ns
  for ((i = 0; i < n; i++)); do
    ns="$PREFIX$i"
    ip netns add "$ns"
    ip link add "p$i" netns "$SW" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "p$i" master br0 up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null || true
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "198.18.0.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    if ! shape_host "$ns" "$rate" "$flow" "$slots" 2>"$STATE/err"; then
      trap - ERR
      down --kill
      die "shaping failed (needs sch_htb and nftables with conntrack): $(head -3 "$STATE/err" 2>/dev/null)" 4
    fi
  done
  trap - ERR
  echo "$n" >"$STATE/hosts"
  echo "netsim: $n hosts up (rate $rate, flow $flow, $slots slots)"
}

run_in() {
  local i="${1:-}"
  [[ "$i" =~ ^[0-9]+$ ]] || die "exec: host index expected, got '$i'" 2
  shift
  (($#)) || die "exec: no command" 2
  local n ns="$PREFIX$i" hosts=() k
  n=$(hosts_up)
  ((i < n)) || die "exec: host $i is not up ($n hosts)"
  for ((k = 0; k < n; k++)); do hosts+=("198.18.0.$((k + 1))"); done
  export NETSIM_HOST="$i" NETSIM_ADDR="198.18.0.$((i + 1))"
  NETSIM_HOSTS="$(IFS=,; echo "${hosts[*]}")"
  export NETSIM_HOSTS
  if [[ "${NETSIM_UTS:-1}" != 0 ]]; then
    # A UTS namespace of its own, so code that groups ranks by hostname sees separate hosts.
    exec ip netns exec "$ns" unshare --uts -- /bin/sh -c \
      'hostname "$0" && exec "$@"' "$ns" "$@"
  fi
  exec ip netns exec "$ns" "$@"
}

status() {
  is_up || { echo "netsim: down"; return 0; }
  local n i
  n=$(hosts_up)
  echo "netsim: $n hosts"
  for ((i = 0; i < n; i++)); do
    echo "== $PREFIX$i $(ip -n "$PREFIX$i" -4 -o addr show dev eth0 | awk '{print $4}')"
    ip netns exec "$PREFIX$i" tc -s class show dev eth0 | grep -E "^class htb 1:(1|2) " || true
  done
}

cmd="${1:-}"
shift || true
case "$cmd" in
  up) up "$@" ;;
  down) need_root; down "$@" ;;
  exec) run_in "$@" ;;
  status) status ;;
  *) usage ;;
esac
