defmodule Drove.Native do
  @moduledoc false
  # The one module of NIF stubs: the only place that calls into C (c_src/nif/drove_nif.c).
  # Keys and values cross as external term format binaries; see Drove.Native.key/1.
  # Wrong argument types raise ArgumentError; a bad peer message returns {:error, reason}.

  @on_load :load_nif
  @compile {:autoload, false}

  @doc false
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
  def replica_new(_rid, _owner, _track), do: nif()
  @doc false
  def put(_r, _k, _v), do: nif()
  @doc false
  def delete(_r, _k), do: nif()
  @doc false
  def get(_r, _k), do: nif()
  @doc false
  def put_t(_r, _k, _v), do: nif()
  @doc false
  def get_t(_r, _k), do: nif()
  @doc false
  def delete_t(_r, _k), do: nif()
  @doc false
  def encode(_term), do: nif()
  @doc false
  def decode(_bin), do: nif()
  @doc false
  def put_new(_r, _k, _v), do: nif()
  @doc false
  def holds(_r, _k, _v), do: nif()
  @doc false
  def remove_value(_r, _k, _v), do: nif()
  @doc false
  def remove_values(_r, _pairs), do: nif()
  # the registry's pid -> keys index (c_src/owners.h)
  @doc false
  def register(_r, _k, _v, _pid), do: nif()
  @doc false
  def own(_r, _k, _pid), do: nif()
  @doc false
  def disown(_r, _k, _pid), do: nif()
  @doc false
  def owned_keys(_r, _pid), do: nif()
  @doc false
  def owns(_r, _pid), do: nif()
  @doc false
  def drop_owned(_r, _pids), do: nif()
  # registry mode: local registrants watched by resource monitors, their exits dropped in C
  @doc false
  def watch(_r, _registry_pid), do: nif()
  @doc false
  def unwatch(_r), do: nif()
  @doc false
  def take_gone(_r), do: nif()
  @doc false
  def set_owner(_r, _pid), do: nif()
  @doc false
  def set_logging(_r, _on), do: nif()
  @doc false
  def take_outbox(r, max), do: take_outbox(r, max, true)
  @doc false
  def take_outbox(_r, _max, _ship), do: nif()
  @doc false
  def join(_r, _bin, _want_diffs), do: nif()
  @doc false
  def ctx(_r), do: nif()
  @doc false
  def digest(_r), do: nif()
  @doc false
  def summary(_r), do: nif()
  @doc false
  def summary_match(_r, _peer_summary), do: nif()
  @doc false
  def sync_reply(_r, _peer_ctx, _peer_digest, _max_bytes, _max_dots), do: nif()
  @doc false
  def sync_finish(_r, _peer_ctx, _peer_manifest, _max_bytes, _want_diffs), do: nif()
  @doc false
  def to_list(_r), do: nif()
  @doc false
  def info(_r), do: nif()
  @doc false
  def members_set(_candidates, _self), do: nif()

  @doc false
  # c_src/nif/liveness_nif.h
  def tcp_peer_closed(_fd), do: nif()

  # Test hooks (c_src/nif/drove_nif.c): hold a replica's lock until released, and read its
  # lock counters without it, so that tests force the races they need.
  @doc false
  def test_hold(_r, _notify), do: nif()
  @doc false
  def test_release, do: nif()
  @doc false
  def test_counters(_r), do: nif()
  @doc false
  def members_diff(_old, _new), do: nif()

  # Placement (c_src/nif/ring_nif.h). Points and hashes are u32; indices are 0-based.
  @doc false
  def ring_new(_points_per_member), do: nif()
  @doc false
  def ring_owner(_ring, _hash), do: nif()
  @doc false
  def ring_owners(_ring, _hashes), do: nif()
  @doc false
  def ring_info(_ring), do: nif()
  @doc false
  def rendezvous_owner(_member_bins, _key_bin), do: nif()
  @doc false
  def rendezvous_owners(_member_bins, _key_bins), do: nif()
end
