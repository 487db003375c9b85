defmodule Drove.Native do
  @moduledoc false
  # The one module of NIF stubs: the only place that calls into C (c_src/nif/*.c).
  # Keys and values cross as external term format binaries; see Drove.Native.key/1.
  # Wrong argument types raise ArgumentError; a bad peer message returns {:error, reason}.

  # Handles are resources: references to the BEAM, usable from any process of this node.
  @typedoc false
  @type replica :: reference()
  @typedoc false
  @type ring :: reference()
  @typedoc false
  @type error :: {:error, atom()}
  @typedoc false
  @type diff :: {:add, term(), term()} | {:remove, term()}
  @typedoc false
  @type outbox :: {[binary()], [diff()]} | {:dropped, [diff()]} | error()

  @on_load :load_nif
  @compile {:autoload, false}

  @doc false
  @spec load_nif() :: :ok | {:error, term()}
  def load_nif do
    path = :filename.join(:code.priv_dir(:drove), ~c"drove_nif")

    case :erlang.load_nif(path, 0) do
      :ok -> :ok
      {:error, {:reload, _}} -> :ok
      {:error, reason} -> {:error, reason}
    end
  end

  @doc false
  # Canonical bytes of a key: equal terms give equal bytes on every node and OTP >= 25.
  @spec key(term()) :: binary()
  def key(term), do: :erlang.term_to_binary(term, [:deterministic, minor_version: 2])

  @doc false
  @spec value(term()) :: binary()
  # Deterministic too: a registry removes its own element by re-encoding the same value.
  def value(term), do: :erlang.term_to_binary(term, [:deterministic, minor_version: 2])

  defp nif, do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  @spec replica_new(non_neg_integer(), pid(), boolean()) :: replica() | error()
  def replica_new(_rid, _owner, _track), do: nif()
  @doc false
  @spec put(replica(), binary(), binary()) :: :ok | error()
  def put(_r, _k, _v), do: nif()
  @doc false
  @spec delete(replica(), binary()) :: :ok | error()
  def delete(_r, _k), do: nif()
  @doc false
  @spec get(replica(), binary()) :: {:ok, term()} | :error
  def get(_r, _k), do: nif()
  @doc false
  @spec put_t(replica(), term(), term()) :: :ok | :fallback | error()
  def put_t(_r, _k, _v), do: nif()
  @doc false
  @spec get_t(replica(), term()) :: {:ok, term()} | :error | :fallback
  def get_t(_r, _k), do: nif()
  @doc false
  @spec delete_t(replica(), term()) :: :ok | :fallback | error()
  def delete_t(_r, _k), do: nif()
  @doc false
  @spec encode(term()) :: binary() | :fallback
  def encode(_term), do: nif()
  @doc false
  @spec decode(binary()) :: {:ok, term()} | :fallback
  def decode(_bin), do: nif()
  @doc false
  @spec put_new(replica(), binary(), binary()) :: :ok | {:exists, term()} | error()
  def put_new(_r, _k, _v), do: nif()
  @doc false
  @spec put_new_delta(replica(), binary(), binary()) ::
          {:ok, binary()} | {:exists, term()} | error()
  def put_new_delta(_r, _k, _v), do: nif()
  @doc false
  @spec holds(replica(), binary(), binary()) :: boolean()
  def holds(_r, _k, _v), do: nif()
  @doc false
  @spec remove_value(replica(), binary(), binary()) :: :ok | error()
  def remove_value(_r, _k, _v), do: nif()
  @doc false
  @spec remove_values(replica(), [{binary(), binary()}]) :: :ok | error()
  def remove_values(_r, _pairs), do: nif()
  # the registry's pid -> keys index (c_src/owners.h)
  @doc false
  @spec register(replica(), binary(), binary(), pid()) ::
          :ok | {:exists, term()} | :noproc | :not_local | error()
  def register(_r, _k, _v, _pid), do: nif()
  @doc false
  @spec own(replica(), binary(), pid()) :: :ok | :noproc | error()
  def own(_r, _k, _pid), do: nif()
  @doc false
  @spec disown(replica(), binary(), pid()) :: :ok
  def disown(_r, _k, _pid), do: nif()
  @doc false
  @spec owned_keys(replica(), pid()) :: [term()]
  def owned_keys(_r, _pid), do: nif()
  @doc false
  @spec owns(replica(), pid()) :: boolean()
  def owns(_r, _pid), do: nif()
  @doc false
  @spec drop_owned(replica(), [pid()]) :: [{term(), pid()}] | error()
  def drop_owned(_r, _pids), do: nif()
  # registry mode: local registrants watched by resource monitors, their exits dropped in C
  @doc false
  @spec watch(replica(), pid()) :: :ok
  def watch(_r, _registry_pid), do: nif()
  @doc false
  @spec unwatch(replica()) :: :ok
  def unwatch(_r), do: nif()
  @doc false
  @spec take_gone(replica()) :: [{term(), pid()}] | error()
  def take_gone(_r), do: nif()
  @doc false
  @spec set_owner(replica(), pid()) :: :ok
  def set_owner(_r, _pid), do: nif()
  @doc false
  @spec set_logging(replica(), boolean()) :: :ok
  def set_logging(_r, _on), do: nif()
  @doc false
  @spec take_outbox(replica(), pos_integer()) :: outbox()
  def take_outbox(r, max), do: take_outbox(r, max, true)
  @doc false
  @spec take_outbox(replica(), pos_integer(), boolean()) :: outbox()
  def take_outbox(_r, _max, _ship), do: nif()
  @doc false
  @spec join(replica(), binary(), boolean()) ::
          {:ok, [diff()], non_neg_integer()} | error()
  def join(_r, _bin, _want_diffs), do: nif()
  @doc false
  @spec ctx(replica()) :: binary()
  def ctx(_r), do: nif()
  @doc false
  @spec digest(replica()) :: binary()
  def digest(_r), do: nif()
  @doc false
  @spec summary(replica()) :: binary()
  def summary(_r), do: nif()
  @doc false
  @spec summary_match(replica(), binary()) :: boolean() | error()
  def summary_match(_r, _peer_summary), do: nif()
  @doc false
  @spec sync_reply(replica(), binary(), binary(), pos_integer(), non_neg_integer()) ::
          {:ok, [binary()], binary(), binary()} | error()
  def sync_reply(_r, _peer_ctx, _peer_digest, _max_bytes, _max_dots), do: nif()
  @doc false
  @spec sync_finish(replica(), binary(), binary(), pos_integer(), boolean()) ::
          {:ok, [binary()], [diff()], non_neg_integer()} | error()
  def sync_finish(_r, _peer_ctx, _peer_manifest, _max_bytes, _want_diffs), do: nif()
  @doc false
  @spec to_list(replica()) :: [{term(), term()}]
  def to_list(_r), do: nif()
  @doc false
  @spec info(replica()) :: %{atom() => non_neg_integer()}
  def info(_r), do: nif()
  @doc false
  @spec members_set([binary()], binary()) :: [binary()]
  def members_set(_candidates, _self), do: nif()

  @doc false
  # c_src/nif/liveness_nif.h
  @spec tcp_peer_closed(non_neg_integer()) :: boolean()
  def tcp_peer_closed(_fd), do: nif()

  # Test hooks (c_src/nif/lock_nif.c): hold a replica's lock until released, and read its
  # lock counters without it, so that tests force the races they need.
  @doc false
  @spec test_hold(replica(), pid()) :: :ok
  def test_hold(_r, _notify), do: nif()
  @doc false
  @spec test_release() :: :ok
  def test_release, do: nif()
  @doc false
  @spec test_counters(replica()) :: {non_neg_integer(), non_neg_integer()}
  def test_counters(_r), do: nif()
  @doc false
  @spec members_diff([binary()], [binary()]) :: {[binary()], [binary()]}
  def members_diff(_old, _new), do: nif()

  # Placement (c_src/nif/ring_nif.h). Points and hashes are u32; indices are 0-based.
  @doc false
  @spec ring_new([[non_neg_integer()]]) :: ring()
  def ring_new(_points_per_member), do: nif()
  @doc false
  @spec ring_owner(ring(), non_neg_integer()) :: non_neg_integer()
  def ring_owner(_ring, _hash), do: nif()
  @doc false
  @spec ring_owners(ring(), [non_neg_integer()]) :: [non_neg_integer()]
  def ring_owners(_ring, _hashes), do: nif()
  @doc false
  @spec ring_info(ring()) :: {pos_integer(), pos_integer()}
  def ring_info(_ring), do: nif()
  @doc false
  @spec rendezvous_owner([binary()], binary()) :: non_neg_integer()
  def rendezvous_owner(_member_bins, _key_bin), do: nif()
  @doc false
  @spec rendezvous_owners([binary()], [binary()]) :: [non_neg_integer()]
  def rendezvous_owners(_member_bins, _key_bins), do: nif()
end
