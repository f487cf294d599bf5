package admit

import "time"

// quota returns the counted gate k's requests are charged to: the charged
// identity's if k is a credential with a known alias (in memory or
// persisted), else k's own, loading its persisted state on first use.
func (a *Admitter) quota(k Key) (*quota, error) {
	a.loadAlias(k)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	if sk, ok := a.aliases[k]; ok {
		k = sk
	}
	q := a.quotas[k]
	if q == nil {
		q = a.newQuota(k)
		a.quotas[k] = q
	}
	a.mu.Unlock()
	q.loadOnce.Do(q.load)
	return q, nil
}

func (a *Admitter) newQuota(k Key) *quota {
	conf, explicit := a.opts.Limits[k.Upstream]
	if !explicit {
		conf = a.opts.Default
		if isDockerHub(k.Upstream) {
			conf = DockerHubAnonymous
		}
	}
	q := &quota{a: a, key: k, conf: conf, explicit: explicit}
	q.gate.pol = q
	q.gate.timeout = a.opts.QueueTimeout
	q.setLimitLocked(time.Now(), conf)
	if a.opts.Budgets != nil {
		q.fleet = a.opts.Budgets(q.budgetConfig())
	}
	return q
}

// chargedQuota records that the upstream charges credential key k to the
// identity src and returns that identity's quota. The first time, the
// credential's own quota (if it has one) is merged into it conservatively
// and its waiters move there; the alias is persisted so that a restart
// charges the same quota before the upstream has answered again. A change
// of charged identity (a new egress address) only moves the alias: the old
// identity's quota stays what it is, since it is someone else's now.
func (a *Admitter) chargedQuota(k Key, src string) *quota {
	sk := Key{Upstream: k.Upstream, Identity: sourcePrefix + src}
	if IsSourceIdentity(k.Identity) {
		q, _ := a.quota(sk)
		return q
	}
	a.loadAlias(k)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	prev, had := a.aliases[k]
	old := a.quotas[k]
	if had && prev == sk && old == nil {
		a.mu.Unlock()
		q, _ := a.quota(sk)
		return q
	}
	a.aliases[k], a.aliasLoaded[k] = sk, true
	delete(a.quotas, k)
	tgt := a.quotas[sk]
	if tgt == nil {
		tgt = a.newQuota(sk)
		a.quotas[sk] = tgt
	}
	a.mu.Unlock()
	tgt.loadOnce.Do(tgt.load)
	if old != nil {
		old.loadOnce.Do(old.load)
		old.mergeInto(tgt)
	}
	if had {
		a.log.Info("admit: upstream now charges this credential to another identity",
			"upstream", k.Upstream, "credential", k.Identity, "charged", sk.Identity, "was", prev.Identity)
	} else {
		a.log.Info("admit: upstream charges this credential to an identity of its own",
			"upstream", k.Upstream, "credential", k.Identity, "charged", sk.Identity)
	}
	a.saveAlias(k)
	return tgt
}

func isDockerHub(upstream string) bool {
	switch upstream {
	case "docker.io", "registry-1.docker.io", "index.docker.io":
		return true
	}
	return false
}

// rateFor picks the request rate of k's upstream: configured, built-in, or
// the global default.
func (a *Admitter) rateFor(k Key) Rate {
	global := Rate{PerSecond: a.opts.RequestsPerSecond, Burst: a.opts.RequestBurst}
	if r, ok := a.opts.Rates[k.Upstream]; ok {
		return r
	}
	if p, ok := builtinProfile(k.Upstream); ok && p.rate != nil {
		r := p.rate(k.Identity)
		if global.PerSecond > 0 && global.PerSecond < r.PerSecond {
			r = Rate{PerSecond: global.PerSecond, Burst: min(r.burst(), global.burst())}
		}
		return r
	}
	return global
}

func (a *Admitter) trafficFor(k Key) (*traffic, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	tr := a.traffic[k.Upstream]
	if tr == nil {
		r := a.rateFor(k)
		tr = &traffic{a: a, upstream: k.Upstream, concurrency: a.opts.Concurrency, rate: r}
		if r.PerSecond > 0 {
			tr.bucket = bucket{
				rate:     r.PerSecond,
				capacity: float64(r.burst()),
				tokens:   float64(r.burst()),
				last:     time.Now(),
			}
		}
		tr.gate.pol = tr
		tr.gate.timeout = a.opts.QueueTimeout
		a.traffic[k.Upstream] = tr
	}
	return tr, nil
}
