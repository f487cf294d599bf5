package realenv

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// The harness itself: every host appears on the internet side as the one
// NAT address (StartFleet checks it), reaches Redis on the LAN, loses it
// under a partition and finds it again after Heal; a killed Redis is gone
// for everyone and a restarted one answers on the same address.
func TestFleetHarness(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	f := StartFleet(t, 3)
	if len(f.Hosts) != 3 || f.NATIP == f.InternetIP {
		t.Fatalf("fleet: %d hosts, NAT %s, internet %s", len(f.Hosts), f.NATIP, f.InternetIP)
	}
	r := f.StartRedis(t)
	for _, h := range f.Hosts {
		if err := hostPing(h, r.Addr); err != nil {
			t.Fatalf("host %s cannot reach Redis at %s: %v\n%s", h.Name, r.Addr, err, f.Describe())
		}
	}

	cut := f.Hosts[0]
	cut.Partition(t, r.Addr)
	if err := hostPing(cut, r.Addr); err == nil {
		t.Errorf("partitioned host %s still reaches Redis", cut.Name)
	}
	if err := hostPing(f.Hosts[1], r.Addr); err != nil {
		t.Errorf("a partition of %s cut %s off too: %v", cut.Name, f.Hosts[1].Name, err)
	}
	cut.Heal(t)
	if err := hostPing(cut, r.Addr); err != nil {
		t.Errorf("healed host %s cannot reach Redis: %v", cut.Name, err)
	}

	pid := r.PID()
	r.Kill(t)
	if err := hostPing(f.Hosts[1], r.Addr); err == nil {
		t.Errorf("Redis answers after Kill")
	}
	r.Restart(t)
	if r.PID() == pid {
		t.Errorf("Restart kept PID %d", pid)
	}
	if err := hostPing(f.Hosts[2], r.Addr); err != nil {
		t.Errorf("restarted Redis unreachable from %s: %v", f.Hosts[2].Name, err)
	}
}

// hostPing sends Redis' inline PING from inside the host's namespace
// (bash's /dev/tcp, bounded by timeout(1)) and wants +PONG.
func hostPing(h *FleetHost, addr string) error {
	host, port, _ := strings.Cut(addr, ":")
	bash, err := exec.LookPath("bash")
	if err != nil {
		return err
	}
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s && printf 'PING\r\n' >&3 && head -c 5 <&3`, host, port)
	out, err := h.Run(nil, "timeout", "3", bash, "-c", script)
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) != "+PONG" {
		return fmt.Errorf("PING answered %q", out)
	}
	return nil
}
