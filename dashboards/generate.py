#!/usr/bin/env python3
"""Writes the Grafana dashboards hvflight-node.json and hvflight-fleet.json.

The JSON files are generated so that every panel follows one layout and the
queries are readable here; edit this file and run it (tests/dashboards.rs
fails when the committed JSON differs from its output, checks every query
with promtool, and checks every metric name against a live agent's
/metrics). Grafana 9+; one Prometheus data source chosen by a variable.
"""

import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self):
        self.x, self.y, self.row_h, self.next_id = 0, 0, 0, 1

    def place(self, w, h):
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def new_row(self):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def id(self):
        self.next_id += 1
        return self.next_id - 1


def target(expr, legend="", ref="A", instant=False, fmt="time_series"):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t.update({"instant": True, "range": False, "format": fmt})
    return t


def refs(exprs):
    out = []
    for i, e in enumerate(exprs):
        expr, legend = e if isinstance(e, tuple) else (e, "")
        out.append(target(expr, legend, chr(ord("A") + i)))
    return out


def row(lay, title):
    lay.new_row()
    p = {"type": "row", "title": title, "id": lay.id(), "collapsed": False,
         "gridPos": lay.place(24, 1), "panels": []}
    lay.new_row()
    return p


def timeseries(lay, title, exprs, unit="short", w=12, h=8, desc="", stack=False, minv=None):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults = {"unit": unit, "custom": custom}
    if minv is not None:
        defaults["min"] = minv
    return {
        "type": "timeseries", "title": title, "description": desc, "id": lay.id(),
        "datasource": DS, "gridPos": lay.place(w, h), "targets": refs(exprs),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
    }


def stat(lay, title, expr, unit="short", w=4, h=4, desc="", legend="", thresholds=None,
         mappings=None, text_mode="auto", color_mode="value"):
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat", "title": title, "description": desc, "id": lay.id(),
        "datasource": DS, "gridPos": lay.place(w, h),
        "targets": [target(expr, legend, instant=True)],
        "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                     "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": color_mode, "graphMode": "none", "textMode": text_mode,
                    "justifyMode": "auto", "orientation": "auto"},
    }


def table(lay, title, expr, w=24, h=8, desc="", exclude=(), rename=None):
    organize = {"excludeByName": {k: True for k in ("Time", "__name__", "job") + tuple(exclude)},
                "renameByName": rename or {}}
    return {
        "type": "table", "title": title, "description": desc, "id": lay.id(),
        "datasource": DS, "gridPos": lay.place(w, h),
        "targets": [target(expr, "", instant=True, fmt="table")],
        "transformations": [{"id": "organize", "options": organize}],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
    }


def red_above(v, warn=None):
    steps = [{"color": "green", "value": None}]
    if warn is not None:
        steps.append({"color": "orange", "value": warn})
    steps.append({"color": "red", "value": v})
    return steps


def variables(with_instance):
    v = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        {"name": "job", "label": "Job", "type": "custom", "query": "hvflight",
         "current": {"text": "hvflight", "value": "hvflight"},
         "options": [{"text": "hvflight", "value": "hvflight", "selected": True}], "hide": 0},
    ]
    if with_instance:
        v.append({
            "name": "instance", "label": "Node", "type": "query", "datasource": DS,
            "query": {"query": 'label_values(hvflight_build_info{job="$job"}, instance)',
                      "refId": "instance"},
            "definition": 'label_values(hvflight_build_info{job="$job"}, instance)',
            "refresh": 2, "sort": 1, "current": {}, "hide": 0,
        })
    return v


def dashboard(uid, title, desc, panels, with_instance):
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["hvflight"],
        "timezone": "utc", "editable": True, "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "graphTooltip": 1, "annotations": {"list": []},
        "links": [{"title": "hvflight", "type": "dashboards", "tags": ["hvflight"], "asDropdown": False}],
        "templating": {"list": variables(with_instance)},
        "panels": panels,
    }


STATES = [
    {"type": "value", "options": {
        "healthy": {"text": "healthy", "color": "green", "index": 0},
        "suspect": {"text": "suspect", "color": "orange", "index": 1},
        "collapsed": {"text": "COLLAPSED", "color": "red", "index": 2},
        "recovering": {"text": "recovering", "color": "yellow", "index": 3}}},
]


def node():
    lay = Layout()
    n = 'job="$job", instance="$instance"'
    p = []
    p.append(row(lay, "Detector: can the guests reach the network?"))
    p.append(stat(lay, "Detector state", f"max by (state) (hvflight_detector_state{{{n}}}) == 1",
                  legend="{{state}}", text_mode="name", mappings=STATES, w=6,
                  desc="healthy / suspect / collapsed / recovering, judged only on traffic that crosses the uplink."))
    p.append(stat(lay, "Eligible guests", f"hvflight_detector_eligible_guests{{{n}}}", w=3,
                  thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
                  desc="Guests whose traffic can judge the uplink now. 0 with guests present = cannot judge."))
    p.append(stat(lay, "Guests", f"hvflight_detector_guests{{{n}}}", w=3))
    p.append(stat(lay, "Incidents in range", f"increase(hvflight_incidents_total{{{n}}}[$__range])", w=4,
                  thresholds=red_above(1)))
    p.append(stat(lay, "Last incident", f"time() - hvflight_last_incident_timestamp_seconds{{{n}}}",
                  unit="s", w=4, desc="Time since the newest bundle's incident."))
    p.append(stat(lay, "Agent", f"hvflight_build_info{{{n}}}", legend="{{version}} on {{host}}",
                  text_mode="name", w=4))
    p.append(timeseries(lay, "Detector state over time", [(f"hvflight_detector_state{{{n}}}", "{{state}}")],
                        w=24, h=6, stack=True))

    p.append(row(lay, "Bridges and uplinks"))
    p.append(timeseries(lay, "Packets per second", [
        (f"rate(hvflight_link_receive_packets_total{{{n}}}[$__rate_interval])", "rx {{interface}} ({{role}})"),
        (f"-rate(hvflight_link_transmit_packets_total{{{n}}}[$__rate_interval])", "tx {{interface}} ({{role}})"),
    ], unit="pps", desc="Received up, sent down. Guests sending while nothing leaves the uplink is what the detector looks for."))
    p.append(timeseries(lay, "Bytes per second", [
        (f"rate(hvflight_link_receive_bytes_total{{{n}}}[$__rate_interval])", "rx {{interface}}"),
        (f"-rate(hvflight_link_transmit_bytes_total{{{n}}}[$__rate_interval])", "tx {{interface}}"),
    ], unit="Bps"))
    p.append(timeseries(lay, "Drops and errors per second", [
        (f"rate(hvflight_link_receive_drops_total{{{n}}}[$__rate_interval])", "rx drop {{interface}}"),
        (f"rate(hvflight_link_transmit_drops_total{{{n}}}[$__rate_interval])", "tx drop {{interface}}"),
        (f"rate(hvflight_link_receive_errors_total{{{n}}}[$__rate_interval])", "rx err {{interface}}"),
        (f"rate(hvflight_link_transmit_errors_total{{{n}}}[$__rate_interval])", "tx err {{interface}}"),
    ], unit="pps", w=8))
    p.append(timeseries(lay, "Carrier and uplink port state", [
        (f"hvflight_link_carrier{{{n}}}", "carrier {{interface}}"),
        (f"hvflight_bridge_port_state{{{n}}}", "STP state {{interface}}"),
    ], w=8, desc="Carrier 1/0. Port state 3 = forwarding; 0 disabled, 1 listening, 2 learning, 4 blocking."))
    p.append(timeseries(lay, "vNICs per bridge", [(f"hvflight_bridge_vnics{{{n}}}", "{{bridge}}")], w=8))

    p.append(row(lay, "Host tables"))
    p.append(timeseries(lay, "Conntrack and neighbour tables, fill", [
        (f"hvflight_conntrack_entries{{{n}}} / hvflight_conntrack_entries_limit{{{n}}}", "conntrack"),
        (f"hvflight_neighbour_entries{{{n}}} / on(instance, job, family) hvflight_neighbour_entries_limit{{{n}}}",
         "neighbours {{family}}"),
    ], unit="percentunit", w=8, minv=0, desc="Near 1 the kernel drops new flows (F3) or refuses new neighbours (F4)."))
    p.append(timeseries(lay, "Conntrack drops per second", [
        (f"rate(hvflight_conntrack_drops_total{{{n}}}[$__rate_interval])", "drop"),
        (f"rate(hvflight_conntrack_early_drops_total{{{n}}}[$__rate_interval])", "early drop"),
        (f"rate(hvflight_conntrack_insert_failures_total{{{n}}}[$__rate_interval])", "insert failed"),
    ], unit="pps", w=8))
    p.append(timeseries(lay, "Softnet backlog", [
        (f"rate(hvflight_softnet_drops_total{{{n}}}[$__rate_interval])", "drops/s"),
        (f"rate(hvflight_softnet_time_squeeze_total{{{n}}}[$__rate_interval])", "time squeeze/s"),
    ], w=8, desc="Backlog drops (netdev_max_backlog) and NET_RX budget exhaustion, all CPUs."))

    p.append(row(lay, "Guests (libvirt)"))
    p.append(timeseries(lay, "Domains by state", [(f"hvflight_domains{{{n}}}", "{{state}}")], w=8, stack=True))
    p.append(timeseries(lay, "Critical group members here", [
        (f"hvflight_critical_group_domains{{{n}}}", "{{critical_group}}")], w=8,
        desc="Running domains of each configured critical group (config blast_radius.critical_groups). Above 1: replicas share this host."))
    p.append(stat(lay, "libvirt", f"hvflight_libvirt_up{{{n}}}", w=8,
                  mappings=[{"type": "value", "options": {"0": {"text": "not answering", "color": "red"},
                                                          "1": {"text": "up", "color": "green"}}}]))
    p.append(table(lay, "Domains", f"hvflight_domain_info{{{n}}}", exclude=("Value", "instance"),
                   desc="One row per domain libvirt lists, with nova project and instance name."))

    p.append(row(lay, "Agent health"))
    p.append(timeseries(lay, "Sample lag and duration", [
        (f"hvflight_sample_lag_seconds{{{n}}}", "lag"),
        (f"hvflight_sample_duration_seconds{{{n}}}", "duration"),
        (f"rate(hvflight_sample_overruns_total{{{n}}}[$__rate_interval])", "overruns/s"),
    ], unit="s", w=8))
    p.append(timeseries(lay, "Collectors", [
        (f"hvflight_collector_up{{{n}}}", "up {{collector}}"),
        (f"rate(hvflight_collector_failures_total{{{n}}}[$__rate_interval]) / on(instance, job) group_left() "
         f"rate(hvflight_samples_total{{{n}}}[$__rate_interval])", "failing share {{collector}}"),
    ], w=8, desc="up = the collector filled its section in the last sample; failing share = of the samples."))
    p.append(timeseries(lay, "Events per second", [
        (f"rate(hvflight_events_total{{{n}}}[$__rate_interval])", "{{source}}"),
        (f"rate(hvflight_events_lost_total{{{n}}}[$__rate_interval])", "lost {{source}}"),
    ], w=8))
    p.append(timeseries(lay, "Kernel log: catalogue signatures", [
        (f"increase(hvflight_kmsg_signature_lines_total{{{n}}}[$__rate_interval]) > 0", "{{signature}}")],
        w=8, desc="Kernel-log lines matching a failure-catalogue signature (F1 NIC hang, F4 neighbour overflow, …)."))
    p.append(timeseries(lay, "Store and bundles", [
        (f"hvflight_store_bytes{{{n}}}", "store"),
        (f"hvflight_bundle_bytes{{{n}}}", "bundles"),
    ], unit="bytes", w=8))
    p.append(timeseries(lay, "Bundles", [
        (f"hvflight_bundles{{{n}}}", "kept"),
        (f"hvflight_bundle_in_progress{{{n}}}", "in progress"),
        (f"increase(hvflight_bundle_writes_total{{{n}}}[$__rate_interval])", "written"),
        (f"increase(hvflight_bundle_write_failures_total{{{n}}}[$__rate_interval])", "write failures"),
        (f"increase(hvflight_store_dropped_records_total{{{n}}}[$__rate_interval])", "store records dropped"),
    ], w=8))
    p.append(timeseries(lay, "Spool and uploads", [
        (f"hvflight_spool_bundles{{{n}}}", "spooled bundles"),
        (f"increase(hvflight_uploads_total{{{n}}}[$__rate_interval])", "uploads"),
        (f"increase(hvflight_upload_failures_total{{{n}}}[$__rate_interval])", "upload failures"),
    ], w=8))
    p.append(stat(lay, "Spooled bytes", f"hvflight_spool_bytes{{{n}}}", unit="bytes", w=4))
    p.append(stat(lay, "Last upload", f"time() - hvflight_upload_last_success_timestamp_seconds{{{n}}}",
                  unit="s", w=4, thresholds=red_above(86400, 3600)))
    p.append(stat(lay, "Tail clients", f"hvflight_tail_clients{{{n}}}", w=4))
    p.append(stat(lay, "Unknown config keys", f"hvflight_config_unknown_keys{{{n}}}", w=4,
                  thresholds=red_above(1), desc="Keys in hvflight.toml this agent ignores (`hvflight config check`)."))
    return dashboard("hvflight-node", "hvflight — node",
                     "One compute node as hvflight sees it: detector, bridges and uplinks, host tables, guests, agent health.",
                     p, True)


def fleet():
    lay = Layout()
    j = 'job="$job"'
    p = []
    p.append(row(lay, "Now"))
    p.append(stat(lay, "Nodes reporting", f"count(hvflight_build_info{{{j}}})", w=4))
    p.append(stat(lay, "Agents down", f"count(up{{{j}}} == 0) or vector(0)", w=4, thresholds=red_above(1)))
    p.append(stat(lay, "Nodes collapsed", f'sum(hvflight_detector_state{{{j}, state="collapsed"}}) or vector(0)',
                  w=4, thresholds=red_above(1)))
    p.append(stat(lay, "Nodes suspect", f'sum(hvflight_detector_state{{{j}, state="suspect"}}) or vector(0)',
                  w=4, thresholds=red_above(2, 1)))
    p.append(stat(lay, "Nodes that cannot judge",
                  f"count(hvflight_detector_eligible_guests{{{j}}} == 0 and hvflight_detector_guests{{{j}}} > 0) or vector(0)",
                  w=4, thresholds=red_above(10, 1),
                  desc="Guests present, none eligible: a collapse there would go unnoticed."))
    p.append(stat(lay, "Critical groups sharing a host",
                  f"count(critical_group:hvflight_colocated_domains:count{{{j}}}) or vector(0)", w=4,
                  thresholds=red_above(1)))
    p.append(timeseries(lay, "Nodes by detector state", [(f"job:hvflight_detector_state:count{{{j}}}", "{{state}}")],
                        w=12, stack=True))
    p.append(timeseries(lay, "Incidents", [
        (f"sum by (instance) (increase(hvflight_incidents_total{{{j}}}[$__rate_interval])) > 0", "{{instance}}")],
        w=12, desc="Collapses declared, per node."))
    p.append(table(lay, "Nodes not healthy", f'hvflight_detector_state{{{j}, state!="healthy"}} == 1',
                   w=12, exclude=("Value",)))
    p.append(table(lay, "Critical groups with several members on one host",
                   f"critical_group:hvflight_colocated_domains:count{{{j}}}", w=12,
                   rename={"Value": "members on this host"},
                   desc="From the recording rule over hvflight_domain_info: migrate one of them."))

    p.append(row(lay, "Host tables and traffic"))
    p.append(timeseries(lay, "Conntrack fill, top 10", [
        (f"topk(10, instance:hvflight_conntrack_fill:ratio{{{j}}})", "{{instance}}")], unit="percentunit", w=8, minv=0))
    p.append(timeseries(lay, "Neighbour table fill, top 10", [
        (f"topk(10, instance:hvflight_neighbour_fill:ratio{{{j}}})", "{{instance}} {{family}}")],
        unit="percentunit", w=8, minv=0))
    p.append(timeseries(lay, "Bridge and uplink drops, top 10 nodes", [
        (f"topk(10, sum by (instance) (instance:hvflight_link_drops:rate1m{{{j}}}))", "{{instance}}")],
        unit="pps", w=8))
    p.append(timeseries(lay, "Uplink packets per second, fleet", [
        (f'sum(instance:hvflight_link_receive_packets:rate1m{{{j}, role="uplink"}})', "rx"),
        (f'-sum(instance:hvflight_link_transmit_packets:rate1m{{{j}, role="uplink"}})', "tx"),
    ], unit="pps", w=12))
    p.append(timeseries(lay, "Softnet drops per second, top 10", [
        (f"topk(10, rate(hvflight_softnet_drops_total{{{j}}}[$__rate_interval]))", "{{instance}}")], w=12))

    p.append(row(lay, "Agents"))
    p.append(timeseries(lay, "Failing collectors", [
        (f"instance:hvflight_collector_failures:ratio_rate5m{{{j}}} > 0", "{{instance}} {{collector}}")],
        unit="percentunit", w=8))
    p.append(timeseries(lay, "Sample lag, top 10", [
        (f"topk(10, hvflight_sample_lag_seconds{{{j}}})", "{{instance}}")], unit="s", w=8))
    p.append(timeseries(lay, "Nodes that cannot judge", [
        (f"hvflight_detector_guests{{{j}}} - hvflight_detector_eligible_guests{{{j}}} > 0 "
         f"and hvflight_detector_eligible_guests{{{j}}} == 0", "{{instance}}")], w=8,
        desc="Guests that are not evidence, on nodes with no eligible guest at all."))
    p.append(timeseries(lay, "Spooled bundles, top 10", [
        (f"topk(10, hvflight_spool_bundles{{{j}}} > 0)", "{{instance}}")], w=8))
    p.append(timeseries(lay, "Uploads", [
        (f"sum(increase(hvflight_uploads_total{{{j}}}[$__rate_interval]))", "uploaded"),
        (f"sum(increase(hvflight_upload_failures_total{{{j}}}[$__rate_interval]))", "failed"),
    ], w=8))
    p.append(table(lay, "Agent versions", f"count by (version) (hvflight_build_info{{{j}}})", w=8,
                   rename={"Value": "nodes"}))
    return dashboard("hvflight-fleet", "hvflight — fleet",
                     "Every compute node running hvflight: collapses, nodes that cannot judge, replicas sharing a host, full tables, agent health.",
                     p, False)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for name, d in (("hvflight-node.json", node()), ("hvflight-fleet.json", fleet())):
        with open(os.path.join(out, name), "w") as f:
            json.dump(d, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
