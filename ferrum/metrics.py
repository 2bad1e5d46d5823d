"""Metrics, status and diagnostics types of ``spec/metrics.rs``.

Same type names and field names as the Rust structs, so ``ferrum.serde.to_json`` of any of them
is the JSON the Rust engine would emit. Defaults exist only where the Rust type derives
``Default``; everything else must be computed by the engine from real events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ferrum.serde import utc_now
from ferrum.types import EngineConfig


@dataclass
class MemoryUsage:
    total_bytes: int
    used_bytes: int
    free_bytes: int
    gpu_memory_bytes: int | None
    cpu_memory_bytes: int | None
    cache_memory_bytes: int
    utilization_percent: float = 0.0

    def calculate_utilization(self) -> None:
        """Percentage of ``total_bytes`` in use (0 when the total is unknown)."""
        self.utilization_percent = (
            self.used_bytes / self.total_bytes * 100.0 if self.total_bytes > 0 else 0.0
        )


@dataclass
class EngineStatus:
    is_ready: bool
    loaded_models: list[str]
    active_requests: int
    queued_requests: int
    memory_usage: MemoryUsage
    uptime_seconds: int
    last_heartbeat: datetime
    version: str


@dataclass
class SchedulerStats:
    waiting_requests: int
    running_requests: int
    preempted_requests: int
    completed_requests: int
    failed_requests: int
    cancelled_requests: int
    avg_wait_time_ms: float
    avg_execution_time_ms: float
    throughput_rps: float
    queue_utilization: float


@dataclass
class PrefixCacheStats:
    cached_prefixes: int
    prefix_hit_rate: float
    avg_prefix_length: float
    memory_saved_bytes: int


@dataclass
class CacheStats:
    total_blocks: int
    used_blocks: int
    free_blocks: int
    cache_hit_rate: float
    cache_hits: int
    cache_misses: int
    eviction_count: int
    avg_block_utilization: float
    prefix_cache_stats: PrefixCacheStats | None


@dataclass
class BatchingMetrics:
    avg_batch_size: float
    batch_utilization: float
    batches_created: int
    batches_completed: int
    avg_batch_time_ms: float
    tokens_per_second: float


@dataclass
class LatencyMetrics:
    avg_latency_ms: float
    p50_latency_ms: float
    p90_latency_ms: float
    p95_latency_ms: float
    p99_latency_ms: float
    p999_latency_ms: float
    avg_ttft_ms: float
    avg_inter_token_latency_ms: float


@dataclass
class ThroughputMetrics:
    requests_per_second: float
    tokens_per_second: float
    characters_per_second: float
    batches_per_second: float
    peak_tokens_per_second: float


@dataclass
class PhaseMetrics:
    operations: int
    avg_time_ms: float
    total_time_ms: float
    tokens_processed: int


@dataclass
class ModelMetrics:
    model_id: str
    forward_passes: int
    avg_forward_time_ms: float
    prefill_metrics: PhaseMetrics
    decode_metrics: PhaseMetrics
    tokens_generated: int


@dataclass
class RequestMetrics:
    request_id: str
    client_id: str | None
    model_id: str
    created_at: datetime
    completed_at: datetime | None
    total_time_ms: int
    queue_time_ms: int
    prefill_time_ms: int
    decode_time_ms: int
    input_tokens: int
    output_tokens: int
    was_preempted: bool
    preemption_count: int


@dataclass
class GpuMetrics:
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_celsius: float
    power_watts: float


@dataclass
class NetworkMetrics:
    rx_bytes_per_sec: int
    tx_bytes_per_sec: int
    rx_packets_per_sec: int
    tx_packets_per_sec: int


@dataclass
class DiskMetrics:
    read_bytes_per_sec: int
    write_bytes_per_sec: int
    read_ops_per_sec: int
    write_ops_per_sec: int


@dataclass
class SystemMetrics:
    cpu_usage_percent: float
    memory_usage: MemoryUsage
    gpu_utilization: GpuMetrics | None
    network_io: NetworkMetrics
    disk_io: DiskMetrics
    load_average: list[float]


@dataclass
class ErrorEvent:
    timestamp: datetime
    error_type: str
    message: str
    request_id: str | None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class ErrorStats:
    total_errors: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    error_rate: float = 0.0
    recent_errors: list[ErrorEvent] = field(default_factory=list)


@dataclass
class QueueMetrics:
    current_queue_length: int = 0
    avg_queue_wait_time_ms: float = 0.0
    queue_throughput_rps: float = 0.0
    queue_rejection_rate: float = 0.0


@dataclass
class ResourceMetrics:
    cpu_utilization: float = 0.0
    memory_utilization: float = 0.0
    gpu_utilization: float | None = None
    network_utilization: float = 0.0
    disk_utilization: float = 0.0


@dataclass
class PerformanceBreakdown:
    tokenization_time_ms: float = 0.0
    model_execution_time_ms: float = 0.0
    sampling_time_ms: float = 0.0
    scheduling_time_ms: float = 0.0
    memory_operations_time_ms: float = 0.0
    other_overhead_time_ms: float = 0.0


@dataclass
class EngineMetrics:
    total_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    avg_request_latency_ms: float = 0.0
    p95_request_latency_ms: float = 0.0
    p99_request_latency_ms: float = 0.0
    throughput_rps: float = 0.0
    tokens_per_second: float = 0.0
    queue_metrics: QueueMetrics = field(default_factory=QueueMetrics)
    resource_utilization: ResourceMetrics = field(default_factory=ResourceMetrics)
    error_stats: ErrorStats = field(default_factory=ErrorStats)
    performance_breakdown: PerformanceBreakdown = field(default_factory=PerformanceBreakdown)


class HealthStatusType(str, enum.Enum):
    Healthy = "Healthy"
    Warning = "Warning"
    Unhealthy = "Unhealthy"


@dataclass
class ComponentHealth:
    status: HealthStatusType
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    last_check: datetime = field(default_factory=utc_now)

    @classmethod
    def healthy(cls, component: str, **metrics: float) -> ComponentHealth:
        return cls(HealthStatusType.Healthy, f"{component} healthy", dict(metrics))


@dataclass
class ComponentStatus:
    scheduler: ComponentHealth
    model_executor: ComponentHealth
    tokenizer: ComponentHealth
    kv_cache: ComponentHealth
    memory_manager: ComponentHealth
    backend: ComponentHealth

    def entries(self) -> list[ComponentHealth]:
        return [
            self.scheduler,
            self.model_executor,
            self.tokenizer,
            self.kv_cache,
            self.memory_manager,
            self.backend,
        ]


@dataclass
class HealthStatus:
    status: HealthStatusType
    component_status: ComponentStatus
    last_check: datetime = field(default_factory=utc_now)

    @classmethod
    def from_components(cls, components: ComponentStatus) -> HealthStatus:
        """Overall status is the worst of the components'."""
        order = [HealthStatusType.Healthy, HealthStatusType.Warning, HealthStatusType.Unhealthy]
        worst = max((c.status for c in components.entries()), key=order.index)
        return cls(worst, components)


class TrendDirection(str, enum.Enum):
    Improving = "Improving"
    Stable = "Stable"
    Degrading = "Degrading"
    Volatile = "Volatile"


@dataclass
class AllocationInfo:
    size: int
    allocation_type: str
    timestamp: datetime


@dataclass
class GpuMemoryDetails:
    total_memory: int = 0
    used_memory: int = 0
    memory_by_type: dict[str, int] = field(default_factory=dict)
    large_allocations: list[AllocationInfo] = field(default_factory=list)


@dataclass
class NetworkIODetails:
    bytes_received_per_sec: int = 0
    bytes_sent_per_sec: int = 0
    connection_count: int = 0
    request_rate_per_sec: float = 0.0


@dataclass
class DetailedResourceUsage:
    memory_by_component: dict[str, int] = field(default_factory=dict)
    cpu_by_thread: dict[str, float] = field(default_factory=dict)
    gpu_memory_details: GpuMemoryDetails | None = None
    network_io_details: NetworkIODetails = field(default_factory=NetworkIODetails)


@dataclass
class PerformanceBottleneck:
    bottleneck_type: str
    severity: float
    description: str
    performance_impact: float


@dataclass
class PerformanceRecommendation:
    category: str
    description: str
    expected_impact: float
    complexity: float


@dataclass
class PerformanceTrends:
    latency_trend: TrendDirection = TrendDirection.Stable
    throughput_trend: TrendDirection = TrendDirection.Stable
    error_rate_trend: TrendDirection = TrendDirection.Stable
    resource_utilization_trend: TrendDirection = TrendDirection.Stable


@dataclass
class PerformanceAnalysis:
    bottlenecks: list[PerformanceBottleneck] = field(default_factory=list)
    recommendations: list[PerformanceRecommendation] = field(default_factory=list)
    trends: PerformanceTrends = field(default_factory=PerformanceTrends)


@dataclass
class BuildInfo:
    build_timestamp: str = ""
    git_commit: str | None = None
    build_config: str = ""
    compiler_flags: list[str] = field(default_factory=list)


@dataclass
class RuntimeInfo:
    rust_version: str = ""
    engine_version: str = ""
    build_info: BuildInfo = field(default_factory=BuildInfo)
    feature_flags: list[str] = field(default_factory=list)


@dataclass
class SystemInfo:
    os: str = ""
    cpu_info: str = ""
    total_memory: int = 0
    devices: list[str] = field(default_factory=list)
    runtime_info: RuntimeInfo = field(default_factory=RuntimeInfo)


@dataclass
class DiagnosticsReport:
    config_snapshot: EngineConfig
    current_metrics: EngineMetrics
    resource_usage: DetailedResourceUsage
    performance_analysis: PerformanceAnalysis
    component_diagnostics: dict[str, Any]
    system_info: SystemInfo


@dataclass
class EngineRequestProgress:
    tokens_processed: int = 0
    tokens_remaining: int = 0
    elapsed_time_ms: int = 0
    estimated_remaining_ms: int | None = None


@dataclass
class EngineRequestState:
    request_id: str
    current_phase: str
    progress: EngineRequestProgress
    allocated_resources: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineState:
    config: EngineConfig
    metrics: EngineMetrics
    component_states: dict[str, Any]
    active_requests: list[EngineRequestState]
    timestamp: datetime = field(default_factory=utc_now)


@dataclass
class SpeculationConfig:
    """Speculative decoding settings.

    ``draft_model_config`` names the draft: ``{"artifact": path}`` for a second compiled model
    sharing the tokenizer, or ``{"ngram": n}`` (or ``None``) for prompt-lookup drafting.
    """

    speculation_depth: int = 4
    acceptance_threshold: float = 0.0
    draft_model_config: dict[str, Any] | None = None


@dataclass
class WarmupResult:
    requests_processed: int = 0
    total_time_ms: int = 0
    avg_latency_ms: float = 0.0
    memory_allocated_bytes: int = 0
    success: bool = False
    issues: list[str] = field(default_factory=list)


@dataclass
class LatencyRequirements:
    target_p95_latency_ms: int
    target_p99_latency_ms: int
    max_latency_ms: int


@dataclass
class RequestCharacteristics:
    avg_input_tokens: int
    avg_output_tokens: int
    typical_batch_size: int
    latency_requirements: LatencyRequirements


@dataclass
class HardwareConstraints:
    available_devices: list[str]
    total_memory: int
    expected_request_rate: float
    request_characteristics: RequestCharacteristics
