# The suite needs a distributed node (Drove replicates over Erlang distribution and the
# multi-node tests start peers with :peer). `make test-elixir` starts epmd on loopback; a plain
# `mix test` starts it here.
unless Node.alive?() do
  epmd = System.find_executable("epmd") || "epmd"
  System.cmd(epmd, ["-daemon"], env: [{"ERL_EPMD_ADDRESS", "127.0.0.1"}])

  # `epmd -daemon` returns before epmd accepts connections: wait for it (up to 5 s).
  Enum.reduce_while(1..100, nil, fn _, _ ->
    case System.cmd(epmd, ["-names"], stderr_to_stdout: true) do
      {_, 0} -> {:halt, :ok}
      _ -> Process.sleep(50) && {:cont, nil}
    end
  end)

  # listen on loopback only, like the peers
  Application.put_env(:kernel, :inet_dist_use_interface, {127, 0, 0, 1})

  # Another suite may already hold the name (two checkouts tested at once): use a unique one.
  started =
    with {:error, _} <- :net_kernel.start([:"drove_test@127.0.0.1", :longnames]) do
      name = :"drove_test_#{System.unique_integer([:positive])}_#{:os.getpid()}@127.0.0.1"
      :net_kernel.start([name, :longnames])
    end

  case started do
    {:ok, _} ->
      :ok

    {:error, reason} ->
      raise "could not start distribution (is epmd running?): #{inspect(reason)}"
  end
end

Node.set_cookie(:drove)

ExUnit.start(exclude: [:chaos_long, :sanitizer])
